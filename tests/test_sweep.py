"""`sslab sweep`: an Optuna study as concurrent Ray Train trials, one MLflow parent run with nested trials."""
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config_loader import load_config
from orchestrator.evaluate_checkpoint import evaluate_checkpoint
from orchestrator.sweep import run_sweep

from conftest import ROOT

TINY = ["train.epochs=2", "model.width=4", "eval.knn_k=20", "eval.embedding_map_points=100", "train.progress=false",
        "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "resources.cpus_per_worker=1", "name=tinysweep"]
SEARCH = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "tpe", "pruner": "median",
          "n_trials": 3, "max_concurrent_trials": 2, "seed": 0,
          "space": {"workload.temperature": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
                    "train.batch_size": {"type": "categorical", "choices": [128, 256]}}}


def test_pruner_stops_trials_in_a_bad_region_and_marks_them(ray_local, workdir):
    import json

    search = {**SEARCH, "sampler": "random", "pruner": "median", "n_trials": 5, "max_concurrent_trials": 2, "seed": 3,
              "space": {"workload.temperature": {"type": "float", "low": 0.05, "high": 5.0, "log": True}}}
    config = load_config(f"{ROOT}/examples/quickstart.yaml",
                         TINY + ["name=prunesweep", "train.epochs=3", "train.batch_size=128", f"search={json.dumps(search)}"])
    result = run_sweep(config)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("prunesweep")
    pruned = client.search_runs([experiment.experiment_id], "tags.`sslab.pruned` = 'true'")
    assert pruned, "no trial was pruned"
    for run in pruned:
        assert run.info.status == "KILLED" and run.data.tags["sslab.kind"] == "trial"
        epochs = len(client.get_metric_history(run.info.run_id, "train/loss"))
        assert epochs < 3, "a pruned trial stopped before its last epoch"
    assert result.counts.get("PRUNED", 0) == len(pruned)
    assert result.counts.get("COMPLETE", 0) + len(pruned) == 5


def test_grid_sweep_of_a_pretext_workload_stops_when_exhausted_and_fails_only_the_invalid_combination(ray_local, workdir, capsys):
    """`sslab sweep examples/rotation.yaml` (in this process, on the test's Ray) over a pretext task's own
    hyperparameter (rotation's head width) and warmup_epochs, which must be below epochs: the (epochs 1,
    warmup 1) points are FAILED trials with the reason, the others run, and the sweep ends when the grid
    is exhausted although n_trials is larger. A finished trial's record is a pretext run's: the task's
    metric, its figure, an encoder that `sslab eval` rebuilds."""
    import json

    from sslab.cli import main

    search = {**SEARCH, "sampler": "grid", "pruner": "none", "n_trials": 10, "max_concurrent_trials": 2,
              "space": {"workload.hidden": {"type": "categorical", "choices": [0, 16]},
                        "train.epochs": {"type": "categorical", "choices": [1]},
                        "train.warmup_epochs": {"type": "categorical", "choices": [0, 1]}}}
    overrides = TINY + ["name=gridsweep", "data.val_fraction=0.5", "train.batch_size=256", f"search={json.dumps(search)}"]
    assert main(["sweep", f"{ROOT}/examples/rotation.yaml", *[a for o in overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out  # the Ray workers' logs (log_to_driver), then the summary
    summary = json.loads(out[out.rindex("\n{\n") + 1:])
    assert summary["trials"] == {"COMPLETE": 2, "FAIL": 2}
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("gridsweep")
    runs = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 4 and len(failed) == 2
    assert {r.data.params["train.warmup_epochs"] for r in failed} == {"1"}
    assert all("warmup_epochs" in r.data.tags["sslab.error"] for r in failed)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.params["workload.hidden"] for r in finished) == ["0", "16"]
    assert all(r.data.params["workload"] == "rotation" and "pretext/accuracy" in r.data.metrics for r in finished)
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"

    # A pretext trial's record: the task's metric per epoch, its figure, and an encoder that `sslab eval`
    # rebuilds to the same downstream score.
    run = finished[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretext/accuracy")] == [0]
    assert {"encoder.pt", "embedding_map.png", "rotation.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    local = client.download_artifacts(run.info.run_id, "encoder.pt", str(workdir))
    sample = "examples/data/cifar10_sample.parquet"
    scores = evaluate_checkpoint(local, f"{sample}#split=train&val_fraction=0.5&seed=0",
                                 f"{sample}#split=val&val_fraction=0.5&seed=0", linear_probe=False)
    assert scores["downstream/knn_top1"] == pytest.approx(run.data.metrics["downstream/knn_top1"], abs=1e-9)
