"""A new MLflow SQLite store starts as a copy of an empty, migrated one.

MLflow builds a new SQLite tracking store by replaying its whole Alembic history (about 50
migrations; SQLite rebuilds a table for each ALTER): seconds on a quiet 2-core machine, 10-25 s on a
loaded one, paid by the first run in every new folder. The result depends only on the MLflow and
SQLAlchemy versions, so it is built once per machine, kept in the user's cache under those versions,
and copied. The copy has no Default experiment: MLflow creates it when it first opens the store,
with this store's own artifact root, as it does for a new file. Anything that goes wrong here (a
read-only cache, no hard links) leaves the store to MLflow, the slow way.
"""
import os
import shutil
import sqlite3
import tempfile

import mlflow
import sqlalchemy

from orchestrator.config.local_paths import local_store_path


def template_path() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "sslab", f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}-empty.db")


def scratch_file(folder: str) -> str:
    """A new empty file's name in folder (on the target's file system, for an atomic link/rename)."""
    handle, path = tempfile.mkstemp(dir=folder, prefix=".sslab-mlflow-", suffix=".db")
    os.close(handle)
    return path


def build_template(path: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    os.makedirs(os.path.dirname(path), exist_ok=True)
    scratch = scratch_file(os.path.dirname(path))
    os.unlink(scratch)  # MLflow migrates a store it finds without tables; an empty file it would not
    try:
        SqlAlchemyStore(f"sqlite:///{scratch}", tempfile.gettempdir()).engine.dispose()
        with sqlite3.connect(scratch) as db:  # the Default experiment names the builder's artifact root
            db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            db.execute("DELETE FROM experiments WHERE experiment_id = 0")
        os.replace(scratch, path)  # atomic: two builders at once each leave a whole template
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def prepare_store(uri: str) -> bool:
    """Where `uri` names a SQLite file that does not exist yet, make it a copy of the migrated empty
    store; True if it did. A store another process made meanwhile is never replaced."""
    path = local_store_path(uri) if uri.startswith("sqlite:") else None
    if not path or path == ":memory:" or os.path.exists(path):
        return False
    try:
        template = template_path()
        if not os.path.exists(template):
            build_template(template)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        scratch = scratch_file(folder)
        try:
            shutil.copyfile(template, scratch)
            os.link(scratch, path)  # fails if the file appeared meanwhile: theirs stays
            return True
        finally:
            os.unlink(scratch)
    except (OSError, sqlite3.Error, sqlalchemy.exc.SQLAlchemyError, mlflow.exceptions.MlflowException):
        return False
