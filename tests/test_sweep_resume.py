"""Resume (issue 4): a sweep driver killed with SIGKILL in the middle of the sweep, started again.

The real thing end to end: `sslab sweep` runs as a process of its own (its own local Ray instance),
is SIGKILLed while one trial has finished and another runs, and is run again to completion. The
study then holds exactly n_trials finished trials, no finished trial ran twice, the interrupted ones
are FAIL in Optuna and FAILED in MLflow (with the reason), under the same parent run, and nothing in
MLflow is left RUNNING. The Ray processes of the killed driver die with it (they are looked for by
a marker in their environment and by the driver's private Ray temp dir, and killed by pid if not).
"""
import json
import os
import signal
import sqlite3
import subprocess
import time

import optuna
import pytest
from conftest import BIN, ROOT, MarkedCommand
from mlflow.tracking import MlflowClient

N_TRIALS = 4
NAME = "resumesweep"
TINY = ["train.epochs=1", "model.width=4", "eval.knn_k=20", "eval.embedding_map_points=100", "train.progress=false",
        "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "resources.cpus_per_worker=1", f"name={NAME}"]
SEARCH = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "tpe", "pruner": "none",
          "n_trials": N_TRIALS, "max_concurrent_trials": 2, "seed": 0,
          "space": {"workload.temperature": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
                    "train.batch_size": {"type": "categorical", "choices": [256, 512]}}}


class Driver(MarkedCommand):
    """`sslab sweep` of the quick start, tiny, in a session of its own (conftest.MarkedCommand)."""

    def start(self, log_name: str):
        command = [os.path.join(BIN, "sslab"), "sweep", os.path.join(ROOT, "examples", "quickstart.yaml")]
        for override in TINY + [f"search={json.dumps(SEARCH)}"]:
            command += ["--set", override]
        return self.run(command, log_name)


def trial_runs(db: str) -> list[tuple[str, str, int]]:
    """(run id, status, trial number) of the trial runs in the MLflow store, read without writing it."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            rows = connection.execute(
                "SELECT r.run_uuid, r.status, n.value FROM runs r "
                "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'sslab.kind' AND k.value = 'trial' "
                "JOIN tags n ON n.run_uuid = r.run_uuid AND n.key = 'sslab.trial_number'").fetchall()
        return [(run_id, status, int(number)) for run_id, status, number in rows]
    except sqlite3.OperationalError:  # not created yet, or being migrated
        return []


@pytest.mark.slow
def test_sweep_killed_mid_sweep_resumes_the_same_study(workdir, small_data):
    driver = Driver(workdir)
    mlflow_db, optuna_db = workdir / "mlflow.db", workdir / "optuna.db"
    timings = {}
    try:
        # 1. Run until one trial has FINISHED while another runs, then SIGKILL the driver.
        started = time.time()
        first = driver.start("sweep-1.log")
        while True:
            runs = trial_runs(str(mlflow_db))
            statuses = {status for _, status, _ in runs}
            if {"FINISHED", "RUNNING"} <= statuses:
                break
            assert first.poll() is None, f"the sweep ended before it could be killed:\n{driver.tail()}"
            assert time.time() - started < 400, f"no trial finished within 400 s:\n{driver.tail()}"
            time.sleep(0.2)
        alive = driver.processes()  # what to look for afterwards: the driver, its raylet, GCS, workers
        assert first.pid in alive and any("raylet" in c for c in alive.values()), alive
        assert any(c.startswith("ray::") for c in alive.values()), alive
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        timings["first driver, to the kill"] = time.time() - started

        # Its Ray instance (started by ray.init: GCS, raylet, ... fate-share with the driver, the workers
        # with the raylet) dies with it. Ray's two agents notice the raylet's death at once but may take
        # a minute to exit (they try to report it to the dead GCS first): those are killed here, by pid.
        working = driver.wait_processes_gone(30, ignoring=("ray::DashboardAgent", "ray::RuntimeEnvAgent"))
        timings["its Ray processes gone"] = time.time() - started - timings["first driver, to the kill"]
        assert not working, f"processes of the killed driver still alive 30 s after it: {working}"
        driver.kill_all()

        # What the dead driver left: trials finished, trials running (in MLflow and in the study).
        client = MlflowClient(f"sqlite:///{mlflow_db}")
        experiment = client.get_experiment_by_name(NAME)
        parents = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'sweep'")
        assert len(parents) == 1 and parents[0].info.status == "RUNNING"
        parent_id = parents[0].info.run_id
        runs = trial_runs(str(mlflow_db))
        finished_runs = {run_id: number for run_id, status, number in runs if status == "FINISHED"}
        running_runs = {run_id: number for run_id, status, number in runs if status == "RUNNING"}
        assert finished_runs and running_runs, runs
        study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{optuna_db}")
        before = {t.number: t for t in study.trials}
        complete_before = {n for n, t in before.items() if t.state.name == "COMPLETE"}
        running_before = {n for n, t in before.items() if t.state.name == "RUNNING"}
        assert set(running_runs.values()) <= running_before, (running_runs, before)

        # 2. The same command again, to the end.
        started = time.time()
        second = driver.start("sweep-2.log")
        try:
            second.wait(timeout=480)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the resumed sweep did not finish in 480 s:\n{driver.tail()}")
        timings["second driver, to the end"] = time.time() - started
        assert second.returncode == 0, driver.tail()
        assert not driver.wait_processes_gone(60), "the finished driver left processes behind"
    finally:
        driver.close()
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})

    # The study: exactly n_trials finished (complete or pruned) trials in total, the interrupted ones FAIL.
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{optuna_db}")
    trials = {t.number: t for t in study.trials}
    states = [t.state.name for t in trials.values()]
    assert states.count("COMPLETE") + states.count("PRUNED") == N_TRIALS, states
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"}, states
    failed = {n for n, t in trials.items() if t.state.name == "FAIL"}
    # Trials finished before the kill stay as they were; the ones it left running are FAIL, or (a trial
    # whose run ended just before the kill, before the driver told the study) settled as their run ended.
    for number in complete_before:
        assert trials[number].state.name == "COMPLETE" and trials[number].value == before[number].value
    assert set(running_runs.values()) <= failed
    assert failed <= running_before
    for number in running_before - failed:
        assert trials[number].state.name in ("COMPLETE", "PRUNED")
    # The interrupted trials were retried: their parameters queued once more, as a new trial that finished.
    for number in failed:
        retries = [t for t in trials.values() if t.user_attrs.get("sslab.retry_of") == number]
        assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED"), (number, retries)
        assert retries[0].params == trials[number].params

    # MLflow: the same single parent run, FINISHED; each finished trial ran exactly once.
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    everything = client.search_runs([experiment.experiment_id], "", max_results=1000)
    assert not [r.info.run_id for r in everything if r.info.status == "RUNNING"], "a run was left RUNNING"
    parents = [r for r in everything if r.data.tags.get("sslab.kind") == "sweep"]
    assert [r.info.run_id for r in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags.get("sslab.sweep_id") == NAME
    assert "sslab.error" not in parents[0].data.tags
    assert f"best/{SEARCH['objective']}" in parents[0].data.metrics
    children = [r for r in everything if r.data.tags.get("sslab.kind") == "trial"]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent_id for r in children)
    by_number: dict[int, list] = {}
    for run in children:
        by_number.setdefault(int(run.data.tags["sslab.trial_number"]), []).append(run)
    finished_numbers = [n for n, rs in by_number.items() for r in rs if r.info.status == "FINISHED"]
    assert len(finished_numbers) == len(set(finished_numbers)), "a trial number has two FINISHED runs"
    for number, trial in trials.items():
        if trial.state.name == "COMPLETE":
            assert [r.info.status for r in by_number.get(number, [])] == ["FINISHED"], (number, by_number.get(number))
            assert by_number[number][0].data.metrics[SEARCH["objective"]] == trial.value
    for run_id, number in finished_runs.items():  # the runs finished before the kill were not run again
        assert [r.info.run_id for r in by_number[number]] == [run_id]
    for run_id, number in running_runs.items():  # the runs it left running: FAILED, with the reason
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and "driver stopped" in run.data.tags.get("sslab.error", ""), run
    for number in failed:
        assert all(r.info.status == "FAILED" and r.data.tags.get("sslab.error") for r in by_number.get(number, []))


@pytest.mark.slow
def test_resume_settles_each_interrupted_trial_as_its_mlflow_run_ended(workdir, monkeypatch):
    """The races of a kill, made on purpose: trials the study still holds RUNNING whose runs had ended
    (FINISHED, pruned, FAILED) are told so and not run again; the others are FAIL and queued once."""
    from types import SimpleNamespace

    from orchestrator.config.loader import load_config
    from orchestrator.config.local_paths import with_absolute_paths
    from orchestrator.sweep import driver as sweep
    from orchestrator.sweep.record import SweepRecord
    from orchestrator.sweep.study_actor import StudyCoordinator
    from orchestrator.tracking.record import log_metrics

    search = {**SEARCH, "pruner": "median"}
    config = with_absolute_paths(load_config(os.path.join(ROOT, "examples", "quickstart.yaml"),
                                             TINY + [f"search={json.dumps(search)}"]))
    coordinator = StudyCoordinator(config.search.model_dump(mode="json"), NAME, config.model_dump(mode="json"))
    record = SweepRecord(config, NAME)
    asked = dict(coordinator.ask() for _ in range(5))
    client, objective = record.client, search["objective"]

    def trial_run(number: int) -> str:
        return record.tracker.start_run(config, kind="trial", run_name=f"trial-{number}", tags=record.trial_tags(number))

    finished = trial_run(0)  # ended before the kill; the driver died before telling the study
    log_metrics(client, finished, {objective: 0.5}, step=2)
    client.set_terminated(finished, "FINISHED")
    pruned = trial_run(1)
    client.set_tag(pruned, "sslab.pruned", "true")
    client.set_terminated(pruned, "KILLED")
    failed = trial_run(2)
    client.set_tag(failed, "sslab.error", "ValueError: boom")
    client.set_terminated(failed, "FAILED")
    running = trial_run(3)  # running when the driver died; trial 4 had no run yet

    class Direct:  # the coordinator's methods called in-process: actor.method.remote(...) -> method(...)
        def __init__(self, target):
            self.target = target

        def __getattr__(self, name):
            return SimpleNamespace(remote=getattr(self.target, name))

    monkeypatch.setattr(sweep.ray, "get", lambda value, timeout=None: value)
    sweep.settle(Direct(coordinator), record, "the sweep driver stopped while this trial ran")

    trials = {t.number: t for t in coordinator.study.trials}
    assert [trials[n].state.name for n in range(5)] == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "FAIL"]
    assert trials[0].value == 0.5
    retried = {t.user_attrs["sslab.retry_of"]: t for t in trials.values() if "sslab.retry_of" in t.user_attrs}
    assert sorted(retried) == [3, 4] and all(t.state.name == "WAITING" for t in retried.values())
    assert client.get_run(running).info.status == "FAILED"
    assert client.get_run(running).data.tags["sslab.error"] == "the sweep driver stopped while this trial ran"
    assert [client.get_run(r).info.status for r in (finished, pruned, failed)] == ["FINISHED", "KILLED", "FAILED"]
    # the queued retries come first, with the parameters of the trials they retry
    for _ in retried:
        retry_number, params = coordinator.ask()
        assert params == asked[trials[retry_number].user_attrs["sslab.retry_of"]]
