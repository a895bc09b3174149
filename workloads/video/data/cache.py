"""What a video load keeps on local disk so it is not done twice: the copy of an s3:// prefix and the
decoded clips (keyed by the content hash, which covers the input bytes and the decoding settings)."""
from __future__ import annotations

import os
import tempfile

import pyarrow.fs as pafs
import torch

from workloads.data.errors import DataError
from workloads.data.parquet import open_filesystem


def download_prefix(uri: str, into: str, s3_endpoint_url: str | None = None) -> str:
    """Mirror s3://bucket/prefix into the folder `into` and return it.

    Files already there with the remote size are not fetched again (a cache_dir that holds the copy
    downloads once); local files no longer on S3 are removed, so the copy hashes like the remote.
    """
    filesystem, path = open_filesystem(uri, s3_endpoint_url)
    path = path.rstrip("/")
    try:
        listing = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as error:
        raise DataError(f"{uri}: cannot list the prefix ({error}); check the endpoint (data.s3_endpoint_url) "
                        "and AWS credentials") from None
    files = {info.path[len(path) + 1 :]: info for info in listing if info.type == pafs.FileType.File}
    if not files:
        raise DataError(f"{uri}: no objects under this prefix; expected video files or frame folders below it")
    wanted = {os.path.normpath(os.path.join(into, relative)) for relative in files}
    for folder, _, names in os.walk(into):
        for name in names:
            if os.path.join(folder, name) not in wanted:
                os.remove(os.path.join(folder, name))
    for relative, info in sorted(files.items()):
        local = os.path.join(into, relative)
        if os.path.isfile(local) and os.path.getsize(local) == info.size:
            continue
        os.makedirs(os.path.dirname(local), exist_ok=True)
        try:
            with filesystem.open_input_stream(info.path) as remote, open(local + ".part", "wb") as handle:
                while chunk := remote.read(1 << 22):
                    handle.write(chunk)
        except OSError as error:
            raise DataError(f"{uri}/{relative}: cannot download ({error})") from None
        os.replace(local + ".part", local)  # a killed download leaves no truncated file under the real name
    return into


def s3_folder(uri: str, cache_dir: str | None) -> tuple[str, bool]:
    """Where to mirror an s3:// URI: under cache_dir (kept), else a new temporary folder (the caller
    removes it; the bool says so)."""
    if cache_dir:
        folder = os.path.join(cache_dir, "s3", uri.removeprefix("s3://").rstrip("/"))
        os.makedirs(folder, exist_ok=True)
        return folder, False
    return tempfile.mkdtemp(prefix="sslab-video-s3-"), True


def cache_path(cache_dir: str, content_hash: str) -> str:
    return os.path.join(cache_dir, "decoded", f"{content_hash}.pt")


def load_decoded(cache_dir: str | None, content_hash: str) -> dict | None:
    """The decoded clips saved by save_decoded for this content hash, or None."""
    if not cache_dir or not os.path.isfile(cache_path(cache_dir, content_hash)):
        return None
    try:
        return torch.load(cache_path(cache_dir, content_hash), weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None  # an unreadable cache entry is decoded again (and overwritten), not fatal


def save_decoded(cache_dir: str | None, content_hash: str, entry: dict) -> None:
    """Save plain tensors and lists (loadable with weights_only=True); written aside, then renamed."""
    if not cache_dir:
        return
    path = cache_path(cache_dir, content_hash)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(entry, path + f".{os.getpid()}.part")
    os.replace(path + f".{os.getpid()}.part", path)
