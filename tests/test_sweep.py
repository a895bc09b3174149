"""`sslab sweep`: an Optuna study as concurrent Ray Train trials, one MLflow parent run with nested trials."""
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import load_config
from orchestrator.sweep.driver import run_sweep
from orchestrator.training.evaluate_checkpoint import evaluate_checkpoint
from workloads.data import Normalization, load_images

TINY = ["train.epochs=2", "model.width=4", "eval.knn_k=20", "eval.embedding_map_points=100", "train.progress=false",
        "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "resources.cpus_per_worker=1", "name=tinysweep"]
SEARCH = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "tpe", "pruner": "median",
          "n_trials": 3, "max_concurrent_trials": 2, "seed": 0,
          "space": {"workload.temperature": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
                    "train.batch_size": {"type": "categorical", "choices": [128, 256]}}}


def study_of(workdir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/optuna.db")


def assert_the_study_holds_val_metrics_only(client, study, runs, objective, epochs, test_keys):
    """Every value the study holds is the trial's validation metric as its run logged it: the
    intermediate value of step s is the run's `objective` at step s (measured on val that epoch), the
    trial's value the final one. The held-out test/ metrics (on the finished runs) never reach it."""
    by_number = {t.number: t for t in study.trials}
    checked = 0
    for run in runs:
        trial = by_number[int(run.data.tags["sslab.trial_number"])]
        if run.info.status not in ("FINISHED", "KILLED"):
            continue
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, objective)}
        assert trial.intermediate_values == {s: v for s, v in logged.items() if s < epochs - 1}
        assert trial.intermediate_values, "the pruner got no value"
        if run.info.status == "FINISHED":
            assert trial.state.name == "COMPLETE" and trial.value == logged[epochs] == run.data.metrics[objective]
            assert set(test_keys) <= set(run.data.metrics)
        checked += 1
        assert not any("test" in key for key in {**trial.user_attrs, **trial.system_attrs})
    assert checked == len(runs)


def test_a_sweep_the_pruner_or_the_data_cannot_serve_stops_before_any_work(workdir, tmp_path, capsys):
    """No Ray, no study, no MLflow run: an objective without a per-epoch value under a pruner, and a
    class too small for the three splits, are config errors naming the keys (exit status 2)."""
    import json

    from sslab.cli import main

    def sweep(search: dict, *extra: str) -> int:
        overrides = TINY + [f"search={json.dumps(search)}", *extra]
        return main(["sweep", f"{ROOT}/examples/quickstart.yaml", *[a for o in overrides for a in ("--set", o)]])

    assert sweep({**SEARCH, "objective": "downstream/random_init/knn_top1"}) == 2
    assert "search.objective 'downstream/random_init/knn_top1' has no per-epoch value for the pruner" in capsys.readouterr().err
    table = pa.table({"image": pa.array([b"x"] * 23, pa.binary()), "label": pa.array([0] * 20 + [1] * 3, pa.int64())})
    pq.write_table(table, tmp_path / "small.parquet")
    assert sweep(SEARCH, f"data.uri={tmp_path / 'small.parquet'}") == 2
    err = capsys.readouterr().err
    assert "data.val_fraction 0.1 and data.test_fraction 0.1 leave class '1' (3 images)" in err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "optuna.db").exists()


@pytest.mark.slow
def test_pruner_minimises_the_objective_it_is_given_and_stops_the_worse_trials(ray_local, workdir, small_data):
    """objective repr/alignment, direction minimize: each epoch the pruner gets the trial's alignment
    on the validation split, and stops the trials whose alignment is high (NT-Xent at a high
    temperature pulls the views together more weakly), not the well-aligned ones."""
    import json

    search = {**SEARCH, "objective": "repr/alignment", "direction": "minimize", "sampler": "random", "pruner": "median",
              "n_trials": 5, "max_concurrent_trials": 2, "seed": 5,
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

    study = study_of(workdir, "prunesweep")
    runs = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'")
    assert_the_study_holds_val_metrics_only(client, study, runs, "repr/alignment", epochs=3, test_keys=["test/knn_top1"])
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    for trial in (t for t in study.trials if t.state.name == "PRUNED"):
        step = max(trial.intermediate_values)
        others = sorted(t.intermediate_values[step] for t in complete if step in t.intermediate_values)
        # minimize: a pruned trial was worse (higher) than the median of the finished ones at that step
        assert trial.intermediate_values[step] > others[(len(others) - 1) // 2], (trial.number, step, others)
    best = min(complete, key=lambda t: t.value)
    assert result.best[0] == best.number and result.best[1] == best.value
    parent = client.get_run(result.parent_run_id).data.metrics
    best_run = next(r for r in runs if r.data.tags["sslab.trial_number"] == str(best.number) and r.info.status == "FINISHED")
    assert parent["best/repr/alignment"] == best.value
    assert result.best_test == {"test/knn_top1": best_run.data.metrics["test/knn_top1"]}  # linear_probe off in TINY
    assert parent["best/test/knn_top1"] == result.best_test["test/knn_top1"]


@pytest.mark.slow
def test_grid_sweep_of_a_pretext_workload_stops_when_exhausted_and_fails_only_the_invalid_combination(ray_local, workdir, small_data, capsys):
    """`sslab sweep examples/rotation.yaml` (in this process, on the test's Ray) over a pretext task's own
    hyperparameter (rotation's head width) and warmup_epochs, which must be below epochs: the (epochs 2,
    warmup 2) points are FAILED trials with the reason, the others run, and the sweep ends when the grid
    is exhausted although n_trials is larger. The objective is downstream/linear_top1: the pruner gets
    exactly that metric, measured on the validation split, each epoch. A finished trial's record is a
    pretext run's: the task's metric, its figure, an encoder that `sslab eval` rebuilds."""
    import json

    from sslab.cli import main

    search = {**SEARCH, "objective": "downstream/linear_top1", "sampler": "grid", "pruner": "median", "n_trials": 10,
              "max_concurrent_trials": 2,
              "space": {"workload.hidden": {"type": "categorical", "choices": [0, 16]},
                        "train.epochs": {"type": "categorical", "choices": [2]},
                        "train.warmup_epochs": {"type": "categorical", "choices": [0, 2]}}}
    # train.epochs 3 in the base config, 2 in every trial: warmup 2 is valid alone, not with the trial's epochs
    overrides = TINY + ["name=gridsweep", "train.epochs=3", "data.val_fraction=0.5", "train.batch_size=256",
                        "eval.linear_probe=true", f"search={json.dumps(search)}"]
    assert main(["sweep", f"{ROOT}/examples/rotation.yaml", *[a for o in overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out  # the Ray workers' logs (log_to_driver), then the summary
    summary = json.loads(out[out.rindex("\n{\n") + 1:])
    assert summary["trials"] == {"COMPLETE": 2, "FAIL": 2}
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("gridsweep")
    runs = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 4 and len(failed) == 2
    assert {r.data.params["train.warmup_epochs"] for r in failed} == {"2"}
    assert all("warmup_epochs" in r.data.tags["sslab.error"] for r in failed)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.params["workload.hidden"] for r in finished) == ["0", "16"]
    assert all(r.data.params["workload"] == "rotation" and "pretext/accuracy" in r.data.metrics for r in finished)
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"

    # The pruner got downstream/linear_top1 of epoch 0 (on val), as the run logged it; the study's values
    # are the runs' val metrics; the test/ scores are on the runs and on the parent, never in the study.
    assert_the_study_holds_val_metrics_only(client, study_of(workdir, "gridsweep"), finished,
                                            "downstream/linear_top1", epochs=2,
                                            test_keys=["test/knn_top1", "test/linear_top1"])
    best_run = next(r for r in finished if r.data.tags["sslab.trial_number"] == str(summary["best"]["trial"]))
    parent = client.get_run(summary["parent_run_id"]).data.metrics
    assert parent["best/downstream/linear_top1"] == best_run.data.metrics["downstream/linear_top1"]
    assert summary["best"]["test"] == {k: best_run.data.metrics[k] for k in ("test/knn_top1", "test/linear_top1")}
    assert {parent[f"best/{k}"] for k in summary["best"]["test"]} == set(summary["best"]["test"].values())

    # A pretext trial's record: the task's metric per epoch, its figure, the data's normalisation as
    # params, and an encoder that `sslab eval` rebuilds to the same downstream scores (same splits, the
    # normalisation stored in encoder.pt).
    run = finished[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretext/accuracy")] == [0, 1]
    assert {"encoder.pt", "embedding_map.png", "rotation.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    sample = "examples/data/cifar10_sample.parquet"
    split = "val_fraction=0.5&test_fraction=0.1&seed=0"
    train = load_images(f"{sample}#split=train&{split}")
    assert run.data.params["data_mean"] == Normalization.of_images(train.images).params()["data_mean"]
    assert run.data.params["data_std"] == Normalization.of_images(train.images).params()["data_std"]
    local = client.download_artifacts(run.info.run_id, "encoder.pt", str(workdir))
    scores = evaluate_checkpoint(local, f"{sample}#split=train&{split}", f"{sample}#split=test&{split}")
    assert scores["downstream/knn_top1"] == pytest.approx(run.data.metrics["test/knn_top1"], abs=1e-9)
    assert scores["downstream/linear_top1"] == pytest.approx(run.data.metrics["test/linear_top1"], abs=1e-9)
