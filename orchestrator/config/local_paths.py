"""Relative paths mean the caller's working directory; Ray processes run elsewhere, so make them absolute."""
import os

from orchestrator.config.schema import SSLabConfig


def absolute_sqlite_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def absolute_local(uri: str) -> str:
    base, sep, fragment = uri.partition("#")
    return (os.path.abspath(base) if "://" not in base else base) + sep + fragment


def with_absolute_paths(config: SSLabConfig) -> SSLabConfig:
    resolved = config.model_copy(deep=True)
    resolved.data.uri = absolute_local(config.data.uri)
    resolved.storage.path = absolute_local(config.storage.path)
    resolved.tracking.uri = absolute_sqlite_uri(config.tracking.uri)
    if config.search is not None:  # the study is opened by an actor, elsewhere
        storage = config.search.storage or "sqlite:///optuna.db"
        if storage.startswith("journal:"):
            storage = "journal:" + os.path.abspath(storage[len("journal:"):])
        resolved.search.storage = absolute_sqlite_uri(storage)
    return resolved
