"""Relative paths mean the caller's working directory; Ray processes run elsewhere, so make them absolute.

One rule for every store URL (MLflow's tracking URI, Optuna's storage): sqlite:///relative.db and
journal:relative.log become absolute, database servers and http(s) URLs stay as they are.
"""
import os

from sqlalchemy.engine import make_url

from orchestrator.config.schema import SSLabConfig

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


def absolute_local(uri: str) -> str:
    base, sep, fragment = uri.partition("#")
    return (os.path.abspath(base) if "://" not in base else base) + sep + fragment


def with_absolute_paths(config: SSLabConfig) -> SSLabConfig:
    resolved = config.model_copy(deep=True)
    resolved.data.uri = absolute_local(config.data.uri)
    resolved.storage.path = absolute_local(config.storage.path)
    resolved.tracking.uri = absolute_store_url(config.tracking.uri)
    if config.search is not None:  # the study is opened by an actor, elsewhere
        resolved.search.storage = absolute_store_url(config.search.storage or DEFAULT_STUDY_STORAGE)
    return resolved
