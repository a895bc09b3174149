"""The README's quick start as written: `sslab sweep examples/quickstart.yaml` on the bundled sample."""
import json
import os
import subprocess

import optuna
import pytest
from conftest import BIN, ROOT
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import load_config

PER_TRIAL = ("downstream/knn_top1", "downstream/linear_top1", "repr/alignment", "repr/uniformity",
             "downstream/random_init/knn_top1", "test/knn_top1", "test/linear_top1")


@pytest.mark.slow
def test_quickstart_sweep_records_parent_nested_trials_and_beats_random_init(workdir):
    out = subprocess.run([os.path.join(BIN, "sslab"), "sweep", f"{ROOT}/examples/quickstart.yaml"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    config = load_config(f"{ROOT}/examples/quickstart.yaml")
    epochs, n_trials = config.train.epochs, config.search.n_trials
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert sum(summary["trials"].get(state, 0) for state in ("COMPLETE", "PRUNED")) == n_trials
    assert f"mlflow ui --backend-store-uri sqlite:///{workdir}/mlflow.db" in out.stderr
    assert f"best trial {summary['best']['trial']}: downstream/knn_top1 = " in out.stderr

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")  # absolute: MLflow caches stores by URI
    experiment = client.get_experiment_by_name("quickstart")
    parents = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_id == summary["parent_run_id"]
    assert parent.data.metrics["best/downstream/knn_top1"] == pytest.approx(summary["best"]["downstream/knn_top1"])
    assert set(summary["best"]["test"]) == {"test/knn_top1", "test/linear_top1"}
    for key, value in summary["best"]["test"].items():  # the held-out scores of the best trial, beside the objective
        assert parent.data.metrics[f"best/{key}"] == pytest.approx(value)
    assert "its held-out test scores: test/knn_top1 = " in out.stderr
    assert {"trials.csv", "optimization_history.png", "param_importances.png", "config.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}

    trials = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'")
    assert len(trials) == n_trials
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["temperature"] and run.data.params["batch_size"] in ("128", "256")
        assert len(run.data.params["data_mean"].split(",")) == len(run.data.params["data_std"].split(",")) == 3
        ran = len(client.get_metric_history(run.info.run_id, "train/loss"))
        if run.info.status == "KILLED":  # pruned: stopped before its last epoch, and marked so
            assert run.data.tags["sslab.pruned"] == "true" and ran < epochs
        else:
            assert run.info.status == "FINISHED" and ran == epochs
            assert set(PER_TRIAL) <= set(run.data.metrics)
            assert {"encoder.pt", "embedding_map.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{workdir}/optuna.db")
    by_number = {str(t.number): t for t in study.trials}
    for run in trials:
        state = by_number[run.data.tags["sslab.trial_number"]].state.name
        assert state == ("PRUNED" if run.info.status == "KILLED" else "COMPLETE")

    best = client.get_run([r for r in trials if r.data.tags["sslab.trial_number"] == str(summary["best"]["trial"])][0].info.run_id)
    trained, random_init = best.data.metrics["downstream/knn_top1"], best.data.metrics["downstream/random_init/knn_top1"]
    print(f"quickstart best trial kNN top-1: trained {trained:.3f}, random init {random_init:.3f}")
    assert trained >= random_init + 0.05
