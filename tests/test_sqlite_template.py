"""A new MLflow SQLite store is a copy of a migrated empty one (orchestrator.tracking.sqlite_template):
MLflow runs no migration for it, its Default experiment is its own, and an existing store is never
replaced."""
import logging
import os
import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.record import Tracker
from orchestrator.tracking.sqlite_template import prepare_store, template_path

MIGRATING = "Creating initial MLflow database tables"


def test_a_new_store_is_the_template_and_mlflow_migrates_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    prepare_store(f"sqlite:///{tmp_path}/warm.db")  # the cache has the template from here on
    assert os.path.exists(template_path())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tracker = Tracker("sqlite:///runs/mlflow.db", "copied")  # relative, in a folder not made yet
    assert MIGRATING not in caplog.text
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiments = {e.name: e for e in client.search_experiments()}
    assert experiments["Default"].experiment_id == "0" and tracker.experiment_id == "1"
    assert experiments["Default"].artifact_location == f"{tmp_path}/mlruns/0"  # this store's root, not the builder's
    run = client.create_run(tracker.experiment_id)
    client.log_metric(run.info.run_id, "loss", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 1.5}
    with sqlite3.connect(template_path()) as template, sqlite3.connect(tmp_path / "runs" / "mlflow.db") as store:
        version = "SELECT version_num FROM alembic_version"
        assert store.execute(version).fetchall() == template.execute(version).fetchall() != []
    assert not [name for name in os.listdir(tmp_path / "runs") if name.startswith(".sslab-mlflow-")]


def test_an_existing_store_is_never_replaced(tmp_path):
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "kept")
    before = (tmp_path / "mlflow.db").read_bytes()
    assert prepare_store(f"sqlite:///{tmp_path}/mlflow.db") is False
    assert (tmp_path / "mlflow.db").read_bytes() == before
    assert prepare_store("sqlite:///:memory:") is False and prepare_store("http://127.0.0.1:1") is False


@pytest.mark.slow
def test_without_a_usable_cache_mlflow_builds_the_store_itself(tmp_path, monkeypatch, caplog):
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not_a_folder"))  # the cache cannot be made
    assert prepare_store(f"sqlite:///{tmp_path}/mlflow.db") is False
    assert not (tmp_path / "mlflow.db").exists()
    with caplog.at_level(logging.INFO):
        tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "slow-way")
    assert MIGRATING in caplog.text and tracker.experiment_id == "1"


@pytest.mark.slow
def test_a_fresh_cache_builds_the_template_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert prepare_store(f"sqlite:///{tmp_path}/a.db") is True
    built = os.stat(template_path()).st_mtime_ns
    assert prepare_store(f"sqlite:///{tmp_path}/b.db") is True
    assert os.stat(template_path()).st_mtime_ns == built
    with sqlite3.connect(template_path()) as template:
        assert template.execute("SELECT count(*) FROM experiments").fetchone() == (0,)  # no Default to copy
