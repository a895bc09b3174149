"""load_video: one entry point for every video source, addressed by URI.

    path/to/folder          video files (mp4, avi, webm, mkv, mov), or frame folders ROOT/<clip>/<frame>.png|jpg
    path/to/folder          ... or class folders ROOT/<label>/<videos or frame folders>
    s3://bucket/prefix      either layout on S3: mirrored to a local folder once, then as above
    synthetic:moving_objects?clips=200&objects=2&seed=0   the generator of synthetic.py

Each video is cut into consecutive non-overlapping clips of clip_frames frames (the tail shorter than a
clip is dropped; at most max_clips_per_video clips, taken from the start). Labels come from class
folders or from ROOT/labels.csv (`clip,label`, clip = video file stem or frame folder name); classes
are the label names sorted (numerically where all are integers). A synthetic: URI has no frame rate
and one clip per generated video, so fps and max_clips_per_video do not apply to it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil

import torch

from workloads.data.errors import DataError
from workloads.video.data.cache import download_prefix, load_decoded, s3_folder, save_decoded
from workloads.video.data.decode import VIDEO_EXTENSIONS, decode_video
from workloads.video.data.frames import RATE_FILE, decode_frames, frame_files, read_rate
from workloads.video.data.synthetic import load_synthetic
from workloads.video.dataset import VideoDataset

LABELS_FILE = "labels.csv"


def load_video(uri: str, *, clip_frames: int, image_size: int, fps: float | None = None,
               s3_endpoint_url: str | None = None, max_clips_per_video: int | None = None,
               cache_dir: str | None = None) -> VideoDataset:
    """The clips of `uri` (see the module docstring), decoded once; bad data raises DataError first.

    cache_dir: keep the decoded clips there (and the copy of an s3:// prefix), keyed by the content
    hash, so a second load with the same inputs and settings does not decode again. None: no cache.
    """
    _check_settings(clip_frames, image_size, fps, max_clips_per_video)
    if uri.startswith("synthetic:"):
        return load_synthetic(uri, clip_frames=clip_frames, image_size=image_size, s3_endpoint_url=s3_endpoint_url)
    settings = {"clip_frames": clip_frames, "image_size": image_size, "fps": fps,
                "max_clips_per_video": max_clips_per_video}
    if uri.startswith("s3://"):
        folder, temporary = s3_folder(uri, cache_dir)
        try:
            return _load_folder(download_prefix(uri, folder, s3_endpoint_url), uri, settings, cache_dir)
        finally:
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)
    if not os.path.isdir(uri):
        raise DataError(f"{uri}: no such folder; expected a folder of videos or frame folders, an s3:// prefix "
                        "or synthetic:moving_objects?...")
    return _load_folder(uri, uri, settings, cache_dir)


def _check_settings(clip_frames, image_size, fps, max_clips) -> None:
    for key, value in (("data.clip_frames", clip_frames), ("data.image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise DataError(f"{key} must be a positive integer, got {value!r}")
    if fps is not None and not fps > 0:
        raise DataError(f"data.fps must be above 0 (frames per second) or null for the source's own rate, got {fps!r}")
    if max_clips is not None and (not isinstance(max_clips, int) or max_clips < 1):
        raise DataError(f"data.max_clips_per_video must be a positive integer or null (all clips), got {max_clips!r}")


def _load_folder(root: str, origin: str, settings: dict, cache_dir: str | None) -> VideoDataset:
    entries = _discover(root, origin)                   # (source, path, is_video, class name or None)
    entries = _apply_labels_file(root, origin, entries)
    seen = {}
    for source, path, *_ in entries:  # a.mp4 and a.webm would give one source (and clip name) to two videos
        if seen.setdefault(source, path) != path:
            raise DataError(f"{origin}: {os.path.basename(seen[source])} and {os.path.basename(path)} are both "
                            f"video {source!r}; rename one (a video's name is its file stem)")
    content_hash = _hash(root, entries, settings)
    cached = load_decoded(cache_dir, content_hash)
    if cached is None:
        cached = _decode(root, origin, entries, **settings)
        save_decoded(cache_dir, content_hash, cached)
    return VideoDataset(cached["clips"], cached["names"], cached["sources"], content_hash, cached["labels"],
                        cached["classes"], origin=origin)


def _scan(folder: str) -> tuple[list[str], list[str], list[str]]:
    """(video files, frame images, subfolders) of a folder, names sorted; hidden entries ignored."""
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    videos = [n for n in names if n.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))]
    folders = [n for n in names if os.path.isdir(os.path.join(folder, n))]
    return videos, frame_files(folder), folders


def _discover(root: str, origin: str) -> list[tuple[str, str, bool, str | None]]:
    videos, images, folders = _scan(root)
    valid = ("expected video files (ROOT/<video>.mp4), frame folders (ROOT/<clip>/<frame>.png) "
             "or class folders of either")
    if videos and (images or folders):
        raise DataError(f"{origin}: mixed folder: video files ({videos[0]}) next to "
                        f"{'frame images' if images else 'folders'} ({(images or folders)[0]}); {valid}")
    if videos:
        return [(os.path.splitext(v)[0], os.path.join(root, v), True, None) for v in videos]
    if images and not folders:
        raise DataError(f"{origin}: holds frame images ({images[0]}) directly; {valid}")
    if not folders:
        raise DataError(f"{origin}: no videos or frames; {valid}")
    clips, classes = [], []
    for name in folders:
        sub_videos, sub_images, sub_folders = _scan(os.path.join(root, name))
        if sub_videos and sub_images:
            raise DataError(f"{origin}/{name}: mixed folder: video files ({sub_videos[0]}) next to frame images "
                            f"({sub_images[0]}); {valid}")
        (clips if sub_images else classes).append((name, sub_videos, sub_folders))
    if clips and classes:
        raise DataError(f"{origin}: mixed folder: frame folder {clips[0][0]} next to class folder {classes[0][0]} "
                        f"(a folder of videos or of frame folders); {valid}")
    if clips:
        return [(name, os.path.join(root, name), False, None) for name, _, _ in clips]
    entries = []
    for label, sub_videos, sub_folders in classes:
        where = os.path.join(root, label)
        if sub_videos and sub_folders:
            raise DataError(f"{origin}/{label}: mixed folder: video files ({sub_videos[0]}) next to folders "
                            f"({sub_folders[0]}); {valid}")
        if not sub_videos and not sub_folders:
            raise DataError(f"{origin}/{label}: no videos or frames; {valid}")
        entries += [(f"{label}/{os.path.splitext(v)[0]}", os.path.join(where, v), True, label) for v in sub_videos]
        entries += [(f"{label}/{f}", os.path.join(where, f), False, label) for f in sub_folders]
    return entries


def _apply_labels_file(root: str, origin: str, entries: list) -> list:
    """Entries with the class of ROOT/labels.csv; unchanged where there is none."""
    path = os.path.join(root, LABELS_FILE)
    if not os.path.isfile(path):
        return entries
    if any(label is not None for *_, label in entries):
        raise DataError(f"{origin}/{LABELS_FILE}: labels come from class folders here; remove {LABELS_FILE} "
                        "or put the videos directly under the root")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"clip", "label"} <= set(reader.fieldnames or []):
            raise DataError(f"{origin}/{LABELS_FILE}: header {reader.fieldnames}; expected the columns clip,label")
        rows = {row["clip"].strip(): row["label"].strip() for row in reader}
    sources = [source for source, *_ in entries]
    unknown, missing = sorted(set(rows) - set(sources)), sorted(set(sources) - set(rows))
    if unknown or missing:
        raise DataError(f"{origin}/{LABELS_FILE}: " + "; ".join(
            [f"names clips not in the folder: {unknown[:5]}"] * bool(unknown) +
            [f"has no label for: {missing[:5]}"] * bool(missing)) +
            f"; expected one row per video (file stem) or frame folder, valid clips: {sources[:10]}")
    return [(source, path, is_video, rows[source]) for source, path, is_video, _ in entries]


def _hash(root: str, entries: list, settings: dict) -> str:
    """sha256 over the relative names and bytes of every input file, then the decoding settings."""
    digest = hashlib.sha256()
    files = [os.path.join(root, n) for n in (LABELS_FILE, RATE_FILE) if os.path.isfile(os.path.join(root, n))]
    for _, path, is_video, _ in entries:
        files += [path] if is_video else [os.path.join(path, f) for f in frame_files(path)]
    for path in files:
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        digest.update(f"{relative}\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _decode(root: str, origin: str, entries: list, clip_frames: int, image_size: int, fps: float | None,
            max_clips_per_video: int | None) -> dict:
    """Decode and cut every entry; a video too short for one clip fails here, before anything is returned."""
    rate = read_rate(root, fps) if not all(is_video for _, _, is_video, _ in entries) else None
    max_frames = max_clips_per_video * clip_frames if max_clips_per_video else None
    names = sorted({label for *_, label in entries if label is not None}, key=_class_order)
    clips, clip_names, sources, labels = [], [], [], []
    for source, path, is_video, label in entries:
        shown = f"{origin}/{os.path.relpath(path, root)}"
        frames = (decode_video(path, shown, image_size, fps, max_frames) if is_video
                  else decode_frames(path, shown, image_size, fps, rate, max_frames))
        count = len(frames) // clip_frames
        if count == 0:
            at = f"at {fps:g} fps" if fps else "at its own rate"
            raise DataError(f"{shown} has {len(frames)} frames {at}; a clip needs {clip_frames}: lower data.clip_frames"
                            + (" or data.fps" if fps else ""))
        clips.append(frames[: count * clip_frames].reshape(count, clip_frames, *frames.shape[1:]))
        clip_names += [f"{source}#{k}" for k in range(count)]
        sources += [source] * count
        labels += [names.index(label) if label is not None else -1] * count
    return {"clips": torch.cat(clips), "names": clip_names, "sources": sources, "classes": names,
            "labels": torch.tensor(labels, dtype=torch.int64) if names else None}


def _class_order(name: str):
    """Numeric order where the label is an integer ("2" before "10"), else by name."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)
