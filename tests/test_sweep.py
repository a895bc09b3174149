"""`sslab sweep`: an Optuna study as concurrent Ray Train trials, one MLflow parent run with nested trials."""
import optuna
from mlflow.tracking import MlflowClient

from orchestrator.config_loader import load_config
from orchestrator.sweep import run_sweep

from conftest import ROOT

TINY = ["train.epochs=2", "model.width=4", "eval.knn_k=20", "eval.embedding_map_points=100", "train.progress=false",
        "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "resources.cpus_per_worker=1", "name=tinysweep"]
SEARCH = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "tpe", "pruner": "median",
          "n_trials": 3, "max_concurrent_trials": 2, "seed": 0,
          "space": {"workload.temperature": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
                    "train.batch_size": {"type": "categorical", "choices": [128, 256]}}}


def test_sweep_records_parent_and_nested_trials_and_the_study(ray_local, workdir):
    import json

    config = load_config(f"{ROOT}/examples/quickstart.yaml", TINY + [f"search={json.dumps(SEARCH)}"])
    result = run_sweep(config)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sslab.kind"] == "sweep"
    assert 0.0 <= parent.data.metrics["best/downstream/knn_top1"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"trials.csv", "optimization_history.png", "config.yaml"} <= artifacts
    experiment = client.get_experiment_by_name("tinysweep")
    trials = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'")
    assert len(trials) == 3
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert run.info.status in ("FINISHED", "KILLED")
        assert run.data.params["temperature"] and run.data.params["batch_size"] in ("128", "256")
        assert client.get_metric_history(run.info.run_id, "train/loss")
    study = optuna.load_study(study_name="tinysweep", storage=f"sqlite:///{workdir}/optuna.db")
    assert sorted(t.state.name for t in study.trials) == sorted(
        "PRUNED" if r.info.status == "KILLED" else "COMPLETE" for r in trials)
    assert sorted(str(t.number) for t in study.trials) == sorted(r.data.tags["sslab.trial_number"] for r in trials)


def test_pruner_stops_trials_in_a_bad_region_and_marks_them(ray_local, workdir):
    import json

    search = {**SEARCH, "sampler": "random", "pruner": "median", "n_trials": 5, "max_concurrent_trials": 2, "seed": 3,
              "space": {"workload.temperature": {"type": "float", "low": 0.05, "high": 5.0, "log": True}}}
    config = load_config(f"{ROOT}/examples/quickstart.yaml",
                         TINY + ["name=prunesweep", "train.epochs=4", "train.batch_size=128", f"search={json.dumps(search)}"])
    result = run_sweep(config)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("prunesweep")
    pruned = client.search_runs([experiment.experiment_id], "tags.`sslab.pruned` = 'true'")
    assert pruned, "no trial was pruned"
    for run in pruned:
        assert run.info.status == "KILLED" and run.data.tags["sslab.kind"] == "trial"
        epochs = len(client.get_metric_history(run.info.run_id, "train/loss"))
        assert epochs < 4, "a pruned trial stopped before its last epoch"
    assert result.counts.get("PRUNED", 0) == len(pruned)
    assert result.counts.get("COMPLETE", 0) + len(pruned) == 5
