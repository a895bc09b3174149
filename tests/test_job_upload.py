"""What a submitted sweep carries to the cluster, counted as Ray would upload it; refused when too large."""
import os

import pytest

from orchestrator.jobs import upload as job_upload
from orchestrator.jobs.client import JobError
from orchestrator.jobs.submit import submission_address
from orchestrator.jobs.upload import (
    EXCLUDES,
    check_upload,
    runtime_env,
    travelling_files,
)


def write(path, size=10):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"x" * size)


def test_local_state_and_ignored_files_do_not_travel(tmp_path):
    for name in ("sweep.yaml", "data/train.parquet", ".git/objects/a", ".venv/bin/python", "mlflow.db",
                 "mlruns/0/meta.yaml", "pkg/__pycache__/m.pyc", "scratch/big.bin", "notes/keep.txt", "notes/tmp.log"):
        write(str(tmp_path / name))
    (tmp_path / ".gitignore").write_text("scratch/\n")
    (tmp_path / "notes" / ".rayignore").write_text("*.log\n")
    files = travelling_files(str(tmp_path), EXCLUDES)
    assert sorted(files) == [".gitignore", "data/train.parquet", "notes/.rayignore", "notes/keep.txt", "sweep.yaml"]


def test_too_large_a_directory_is_refused_naming_the_largest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(job_upload, "MAX_UPLOAD_BYTES", 1000)
    write(str(tmp_path / "sweep.yaml"), 10)
    write(str(tmp_path / "images" / "a.bin"), 2000)
    with pytest.raises(JobError, match=r"more than .*Largest: images \(0\.0 MiB\), sweep\.yaml"):
        check_upload(str(tmp_path), EXCLUDES, ["sweep.yaml"])


def test_a_needed_file_that_would_not_travel_is_refused(tmp_path):
    write(str(tmp_path / "sweep.yaml"))
    write(str(tmp_path / "mlruns" / "data.parquet"))
    assert check_upload(str(tmp_path), EXCLUDES, ["sweep.yaml"]) == 10
    with pytest.raises(JobError, match="mlruns/data.parquet would not travel"):
        check_upload(str(tmp_path), EXCLUDES, ["sweep.yaml", "mlruns/data.parquet"])


def test_sslab_packages_travel_as_py_modules_and_not_twice(tmp_path):
    from conftest import ROOT

    outside = runtime_env(str(tmp_path), {})
    assert sorted(os.path.basename(p) for p in outside["py_modules"]) == ["orchestrator", "pipelines", "sslab", "workloads"]
    assert outside["excludes"] == EXCLUDES and outside["working_dir"] == str(tmp_path)
    inside = runtime_env(ROOT, {})
    assert {"/sslab", "/orchestrator", "/workloads", "/pipelines"} <= set(inside["excludes"])
    assert not any(path.startswith(("sslab/", "orchestrator/", "workloads/")) for path in
                   travelling_files(ROOT, inside["excludes"]))


def test_where_a_sweep_goes(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert submission_address(None) is None
    assert submission_address("http://head:8265") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a driver inside a Ray job: run here, on the cluster
    assert submission_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "https://head:8265")
    assert submission_address(None) == "https://head:8265"
