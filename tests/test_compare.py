"""`sslab compare` against a real MLflow SQLite store laid out as DESIGN.md's record of a sweep."""
import csv
import io
import json
import os
import subprocess

import pytest
from conftest import BIN, ROOT
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.tracking.compare import CompareError, compare_runs, format_rows

T0 = 1_700_000_000_000
PARAMS = {"workload": "contrastive", "loss": "infonce", "margin": "0.5", "batch_size": "64", "lr": "0.03",
          "epochs": "3", "backbone": "small_convnet", "seed": "0"}


def _run(client, experiment_id, name, tags, params, metrics, status, start, parent=None):
    tags = dict(tags, **({"mlflow.parentRunId": parent} if parent else {}))
    run_id = client.create_run(experiment_id, start_time=T0 + start, run_name=name, tags=tags).info.run_id
    batch = []
    for key, value in metrics.items():
        for step, v in enumerate(value if isinstance(value, list) else [value]):
            batch.append(Metric(key, v, T0 + start + step, step))
    client.log_batch(run_id, metrics=batch, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, status, end_time=T0 + start + 100)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    sweep = client.create_experiment("cifar10_infonce", artifact_location=str(path.parent / "artifacts"))
    parent = _run(client, sweep, "sweep", {"sslab.kind": "sweep", "sslab.sweep_id": "s1"}, PARAMS,
                  {"downstream/knn_top1": 0.99, "best/downstream/knn_top1": 0.7}, "FINISHED", 0)
    ids = {}
    for number, (status, temperature, metrics, extra) in enumerate([
        ("FINISHED", 0.1, {"downstream/knn_top1": 0.5, "downstream/linear_top1": 0.55, "repr/alignment": 0.8,
                           "repr/uniformity": -2.0, "train/loss": [4.0, 3.5, 3.0]}, {}),
        ("FINISHED", 0.2, {"downstream/knn_top1": 0.7, "downstream/linear_top1": 0.72, "repr/alignment": 0.6,
                           "repr/uniformity": -2.5, "train/loss": [4.0, 3.2, 2.5]}, {}),
        ("FAILED", 0.3, {"train/loss": [4.1]}, {"sslab.error": "RuntimeError: boom"}),
        ("KILLED", 5.0, {"train/loss": [5.0, 4.9]}, {"sslab.pruned": "true"}),
    ]):
        tags = {"sslab.kind": "trial", "sslab.trial_number": str(number), "sslab.study": "s1", **extra}
        ids[number] = _run(client, sweep, f"trial-{number}", tags, dict(PARAMS, temperature=temperature),
                           metrics, status, 1000 * (number + 1), parent=parent)
    single = client.create_experiment("single", artifact_location=str(path.parent / "artifacts"))
    for i, knn in enumerate([0.4, 0.6]):
        _run(client, single, f"train-{i}", {"sslab.kind": "train"}, dict(PARAMS, temperature=0.1),
             {"downstream/knn_top1": knn, "train/loss": [3.0 - i]}, "FINISHED", 100 * i)
    client.create_experiment("empty", artifact_location=str(path.parent / "artifacts"))
    return {"uri": uri, "path": str(path), "parent": parent, "trials": ids}


def sslab(*args, cwd=ROOT):
    return subprocess.run([os.path.join(BIN, "sslab"), *args], capture_output=True, text=True, cwd=cwd)


def test_trials_sorted_best_first_and_parent_never_listed(store):
    rows = compare_runs(store["uri"], "cifar10_infonce")
    trials = store["trials"]
    assert [r["run_id"] for r in rows] == [trials[1], trials[0], trials[2], trials[3]]
    assert store["parent"] not in {r["run_id"] for r in rows}
    assert [r["trial"] for r in rows] == [1, 0, 2, 3]
    assert [r["status"] for r in rows] == ["FINISHED", "FINISHED", "FAILED", "pruned"]
    best = rows[0]
    assert best["temperature"] == "0.2" and best["loss"] == "infonce" and best["batch_size"] == "64"
    assert best["downstream/linear_top1"] == pytest.approx(0.72) and best["repr/uniformity"] == pytest.approx(-2.5)
    assert best["train/loss"] == pytest.approx(2.5)  # the last epoch's value
    assert rows[3]["train/loss"] == pytest.approx(4.9) and rows[3]["downstream/knn_top1"] is None


def test_top_direction_and_other_metric(store):
    top = compare_runs(store["uri"], "cifar10_infonce", top=1)
    assert [r["run_id"] for r in top] == [store["trials"][1]]
    by_loss = compare_runs(store["uri"], "cifar10_infonce", metric="train/loss")  # a loss: minimized
    assert [r["trial"] for r in by_loss] == [1, 0, 2, 3]
    forced = compare_runs(store["uri"], "cifar10_infonce", metric="train/loss", direction="maximize", top=2)
    assert [r["trial"] for r in forced] == [3, 2]
    worst_first = compare_runs(store["uri"], "cifar10_infonce", direction="minimize")
    assert [r["trial"] for r in worst_first] == [0, 1, 2, 3]  # runs without the metric still last
    extra = compare_runs(store["uri"], "cifar10_infonce", metric="best/downstream/knn_top1")
    assert "best/downstream/knn_top1" in extra[0] and len(extra) == 4


def test_train_runs_when_no_trials_and_empty_experiment(store):
    rows = compare_runs(store["uri"], "single")
    assert [r["run_name"] for r in rows] == ["train-1", "train-0"]
    assert "trial" not in rows[0]
    assert compare_runs(store["uri"], "empty") == []


def test_csv_and_json_parse_back(store):
    rows = compare_runs(store["uri"], "cifar10_infonce")
    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert [p["run_id"] for p in parsed] == [r["run_id"] for r in rows]
    assert parsed[0]["status"] == "FINISHED" and parsed[3]["status"] == "pruned" and parsed[2]["status"] == "FAILED"
    assert float(parsed[0]["downstream/knn_top1"]) == pytest.approx(0.7) and parsed[3]["downstream/knn_top1"] == ""
    assert parsed[0]["trial"] == "1" and parsed[0]["temperature"] == "0.2"
    assert json.loads(format_rows(rows, "json")) == rows


def test_table_is_aligned(store):
    rows = compare_runs(store["uri"], "cifar10_infonce")
    lines = format_rows(rows, "table").splitlines()
    assert lines[0].split()[:4] == ["run_id", "run_name", "status", "trial"]
    assert len(lines) == 2 + len(rows)
    assert lines[2].split()[0] == store["trials"][1][:8]
    position = lines[0].index("downstream/knn_top1")
    end = position + len("downstream/knn_top1")
    assert lines[2][:end].endswith("0.7000") and lines[5][:end].endswith("-")


def test_unknown_experiment_lists_the_existing_ones(store):
    with pytest.raises(CompareError, match="no experiment named 'nope'"):
        compare_runs(store["uri"], "nope")
    out = sslab("compare", "nope", "--tracking-uri", store["uri"])
    assert out.returncode == 2, out.stderr
    assert "sslab compare: error: no experiment named 'nope'" in out.stderr
    assert "'cifar10_infonce'" in out.stderr and "'single'" in out.stderr and out.stdout == ""


@pytest.mark.slow
def test_cli_relative_uri_table_and_empty_experiment(store):
    cwd = os.path.dirname(store["path"])
    out = sslab("compare", "cifar10_infonce", "--top", "2", cwd=cwd)  # default sqlite:///mlflow.db, here
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[2].split()[:4] == [store["trials"][1][:8], "trial-1", "FINISHED", "1"]
    empty = sslab("compare", "empty", "--format", "json", "--tracking-uri", store["uri"])
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    assert "experiment 'empty' has no trial or train runs" in empty.stderr
    missing = sslab("compare", "x", "--tracking-uri", "sqlite:///absent.db", cwd=cwd)
    assert missing.returncode == 2 and "no MLflow store at" in missing.stderr
    assert not os.path.exists(os.path.join(cwd, "absent.db"))
