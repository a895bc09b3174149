"""`sslab pipeline run` SIGKILLed twice and run again with the same run key, against the production stack
(MLflow server on PostgreSQL, artifacts and checkpoints on moto S3, the study on PostgreSQL).

Killed first during the sweep (a trial finished, another running), then during the train step; the
third run finishes. Finished work is not repeated: the sweep step has one FINISHED run and its study
exactly n_trials finished trials, each trial finished before a kill kept its one run, the train step
ran again; the dead runs' lock and lease are taken over at once (their pid is gone), and nothing in
the experiment is left RUNNING."""
import json
import os
import shutil
import signal
import time

import optuna
import pytest
from conftest import BIN, ROOT, MarkedCommand
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
NIGHTLY = os.path.join(ROOT, "pipelines", "nightly.yaml")
NAME, KEY, N_TRIALS = "resumable", "R1", 3
SETS = ["model.width=4", "eval.embedding_map_points=100", f"pipeline.name={NAME}", "pipeline.model=test-resume-encoder",
        f"search.n_trials={N_TRIALS}", "search.max_concurrent_trials=2",
        "pipeline.steps=[sweep, {train: {set: [train.epochs=2]}}, evaluate, register, promote]"]


def runs(client: MlflowClient, query: str = "") -> list:
    experiment = client.get_experiment_by_name(NAME)
    return client.search_runs([experiment.experiment_id], query, max_results=1000) if experiment else []


def wait_until(condition, run: MarkedCommand, what: str, seconds: float = 400):
    started = time.time()
    while not (found := condition()):
        assert run.process.poll() is None, f"the pipeline ended before {what}:\n{run.tail()}"
        assert time.time() - started < seconds, f"not {what} within {seconds} s:\n{run.tail()}"
        time.sleep(0.5)
    return found


def kill(run: MarkedCommand) -> int:
    """SIGKILL the pipeline's process alone, as the OOM killer or a lost node would; its Ray goes with it."""
    pid = run.process.pid
    os.kill(pid, signal.SIGKILL)
    run.process.wait()
    run.kill_all()  # Ray's agents may linger a while after their raylet: by pid
    return pid


def test_killed_pipeline_resumes_without_repeating_finished_work(tmp_path, production_stack, small_sample):
    os.makedirs(tmp_path / "examples" / "data")
    # the record of the kills and the resumption, not learning: SMALL_SAMPLE at the sample's path
    shutil.copy(small_sample, tmp_path / "examples" / "data" / "cifar10_sample.parquet")
    command = [os.path.join(BIN, "sslab"), "pipeline", "run", NIGHTLY, "--run-key", KEY]
    for assignment in SETS + production_stack.sets() + [f"pipeline.lock_dir={tmp_path}/locks"]:
        command += ["--set", assignment]
    client = MlflowClient(production_stack.tracking_uri)
    trials = f"tags.`sslab.kind` = 'trial' AND tags.`sslab.sweep_id` = '{NAME}-{KEY}'"
    run = MarkedCommand(tmp_path)
    try:
        # 1. Killed in the sweep: one trial FINISHED, another RUNNING.
        run.run(command, "run-1.log")
        wait_until(lambda: {"FINISHED", "RUNNING"} <= {r.info.status for r in runs(client, trials)}, run,
                   "a trial finished while another ran")
        first_pid = kill(run)
        finished_before = {r.data.tags["sslab.trial_number"]: r.info.run_id
                           for r in runs(client, trials) if r.info.status == "FINISHED"}

        # 2. Again: the sweep resumes; killed once the train step's training run has started.
        run.run(command, "run-2.log")
        wait_until(lambda: runs(client, "tags.`sslab.kind` = 'train' AND attributes.status = 'RUNNING'"), run,
                   "the train step started training")
        kill(run)
        second_log = run.log.read_text()
        trial_runs_after_sweep = len(runs(client, trials))

        # 3. Again, to the end.
        out = tmp_path / "run-3.json"
        with open(out, "w") as stdout:
            third = run.run(command, "run-3.log", stdout=stdout)
            third.wait(timeout=600)
        assert third.returncode == 0, run.tail()
        outcome = json.loads(out.read_text())
        third_log = run.log.read_text()
    finally:
        run.close()

    assert f"took over the lock of a dead holder (host {os.uname().nodename}, pid {first_pid}" in second_log
    assert "step sweep of run key R1 was left RUNNING by a dead process" in second_log
    assert "step train of run key R1 was left RUNNING by a dead process" in third_log
    assert outcome["ran"] == ["train", "evaluate", "register", "promote"], outcome  # the sweep was read back
    assert outcome["outputs"]["promote"]["promoted"] is True

    # Each step: the killed attempts FAILED with the reason, then exactly one FINISHED.
    steps = runs(client, f"tags.`sslab.kind` = 'pipeline_step' AND tags.`sslab.run_key` = '{KEY}'")
    by_step: dict[str, list[str]] = {}
    for step in steps:
        by_step.setdefault(step.data.tags["sslab.step"], []).append(step.info.status)
        if step.info.status == "FAILED":
            assert "process died during this step" in step.data.tags["sslab.error"]
    assert {k: sorted(v) for k, v in by_step.items()} == {
        "sweep": ["FAILED", "FINISHED"], "train": ["FAILED", "FINISHED"], "evaluate": ["FINISHED"],
        "register": ["FINISHED"], "promote": ["FINISHED"]}

    # The sweep: exactly n_trials finished trials; those finished before the kill ran once; none after the sweep.
    study = optuna.load_study(study_name=f"{NAME}-{KEY}", storage=production_stack.optuna_storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == N_TRIALS and set(states) <= {"COMPLETE", "PRUNED",
                                                                                             "FAIL"}, states
    finished = [r for r in runs(client, trials) if r.info.status == "FINISHED"]
    assert len(finished) == N_TRIALS == len({r.data.tags["sslab.trial_number"] for r in finished})
    for number, run_id in finished_before.items():
        assert [r.info.run_id for r in finished if r.data.tags["sslab.trial_number"] == number] == [run_id]
    assert len(runs(client, trials)) == trial_runs_after_sweep
    assert outcome["outputs"]["sweep"]["best_trial"] in [t.number for t in study.trials if t.state.name == "COMPLETE"]

    # The training runs: the killed one FAILED (settled with its step), the resumed one FINISHED.
    assert sorted(r.info.status for r in runs(client, "tags.`sslab.kind` = 'train'")) == ["FAILED", "FINISHED"]
    assert not [r.info.run_id for r in runs(client) if r.info.status == "RUNNING"], "a run was left RUNNING"
