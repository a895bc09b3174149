"""Before a sweep goes to a cluster: settings that only this machine would see are refused, by key."""
import pytest

from orchestrator.config.loader import ConfigError
from orchestrator.config.schema import SSLabConfig
from orchestrator.jobs.cluster_check import check_cluster_storage, where

SEARCH = {"n_trials": 2, "space": {"workload.temperature": {"type": "float", "low": 0.1, "high": 1.0}}}
SHARED = {"tracking": {"uri": "http://mlflow.internal:5000"}, "storage": {"path": "s3://bucket/runs"},
          "search": {**SEARCH, "storage": "postgresql://optuna@db.internal/optuna"}}


def config(**sections) -> SSLabConfig:
    return SSLabConfig.model_validate({"name": "c", "data": {"uri": "examples/data/cifar10_sample.parquet"},
                                       **{**SHARED, **sections}})


@pytest.mark.parametrize("uri, kind", [
    ("http://mlflow:5000", "remote"), ("https://mlflow", "remote"), ("postgresql+psycopg2://u@h/db", "remote"),
    ("mysql://u@h/db", "remote"), ("s3://bucket/prefix", "remote"), ("databricks", "remote"),
    ("mlflow-artifacts:/0", "remote"), ("sqlite:///mlflow.db", "relative"), ("sqlite:////shared/mlflow.db", "absolute"),
    ("sqlite://", "memory"), ("sqlite:///:memory:", "memory"), ("journal:optuna.log", "relative"),
    ("journal:/shared/optuna.log", "absolute"), ("file:///shared/mlruns", "absolute"), ("file:mlruns", "relative"),
    ("mlruns", "relative"), ("./sslab_runs", "relative"), ("/shared/sslab_runs", "absolute"),
])
def test_where_a_uri_points(uri, kind):
    assert where(uri) == kind


def test_shared_services_pass_without_notes():
    assert check_cluster_storage(config()) == []


def test_the_laptop_defaults_are_refused_each_by_key():
    laptop = SSLabConfig.model_validate({"name": "c", "data": {"uri": "examples/data/cifar10_sample.parquet"},
                                         "search": SEARCH})
    with pytest.raises(ConfigError) as error:
        check_cluster_storage(laptop)
    message = str(error.value)
    for expected in ("tracking.uri: 'sqlite:///mlflow.db' is a path relative to the working directory",
                     "search.storage: null (the default, sqlite:///optuna.db) is a path relative",
                     "storage.path: 'sslab_runs' is a path relative"):
        assert expected in message, message
    assert "http(s)://host:5000" in message and "postgresql://" in message and "s3://bucket/prefix" in message
    assert "data.uri" not in message, "a relative data path travels with the working directory"


@pytest.mark.parametrize("sections, key", [
    ({"tracking": {"uri": "sqlite:///:memory:"}}, "tracking.uri"),
    ({"tracking": {"uri": "http://mlflow:5000", "artifact_location": "artifacts"}}, "tracking.artifact_location"),
    ({"search": {**SEARCH, "storage": "journal:optuna.log"}}, "search.storage"),
    ({"search": {**SEARCH, "storage": "sqlite:///optuna.db"}}, "search.storage"),
    ({"storage": {"path": "file:runs"}}, "storage.path"),
    ({"data": {"uri": "../elsewhere/data.parquet"}}, "data.uri"),
])
def test_one_unreachable_setting_is_named(sections, key):
    with pytest.raises(ConfigError) as error:
        check_cluster_storage(config(**sections))
    problems = str(error.value).splitlines()[1:]
    assert len(problems) == 1 and problems[0].strip().startswith(key + ":"), problems


def test_a_shared_local_tracking_store_needs_a_shared_artifact_location():
    with pytest.raises(ConfigError, match="tracking.artifact_location: unset, so with a local tracking store"):
        check_cluster_storage(config(tracking={"uri": "sqlite:////shared/mlflow.db"}))


def test_absolute_local_paths_pass_with_a_note_each():
    notes = check_cluster_storage(config(
        tracking={"uri": "sqlite:////shared/mlflow.db", "artifact_location": "/shared/artifacts"},
        storage={"path": "/shared/runs"}, search={**SEARCH, "storage": "journal:/shared/optuna.log"},
        data={"uri": "/shared/data/train.parquet#split=train"}))
    keys = [note.split(":")[0] for note in notes]
    assert keys == ["tracking.uri", "tracking.artifact_location", "search.storage", "storage.path", "data.uri"]
    assert all("every node" in note for note in notes)


def test_remote_data_and_relative_data_inside_the_working_directory_are_fine():
    assert check_cluster_storage(config(data={"uri": "s3://bucket/train.parquet"})) == []
    assert check_cluster_storage(config(data={"uri": "data/../examples/x.parquet#split=val"})) == []
