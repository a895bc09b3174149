"""Pipelines without Ray: the pipeline file's validation, run keys, the lock between processes, the
exit statuses, the champion gate, and the resume bookkeeping on a real (SQLite) MLflow store."""
import datetime as dt
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import BIN, ROOT, SAMPLE

from orchestrator.config.loader import ConfigError
from pipelines.lock import PipelineLock, PipelineLocked
from pipelines.plan import default_run_key, fill, make_plan
from pipelines.registry import gate
from pipelines.runner import LOCKED

NIGHTLY = os.path.join(ROOT, "pipelines", "nightly.yaml")
UTC = dt.timezone.utc


def write(folder, text: str, name: str = "p.yaml") -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        handle.write(textwrap.dedent(text))
    return path


PIPELINE = f"""\
name: unit
config: {os.path.join(ROOT, "examples", "quickstart.yaml")}
set: [train.epochs=1]
model: unit-encoder
evaluation:
  train: {SAMPLE}#split=train&val_fraction=0.2&test_fraction=0.1&seed=0
  test: {SAMPLE}#split=test&val_fraction=0.2&test_fraction=0.1&seed=0
steps: [sweep, train, evaluate, register, promote]
"""


def test_nightly_validates(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = make_plan(NIGHTLY, run_key="2025-01-31T03:00Z")
    assert [s.step for s in plan.spec.steps] == ["sweep", "train", "evaluate", "register", "promote"]
    assert plan.config.search.study_name == "nightly-2025-01-31T03:00Z"
    assert plan.config.tracking.experiment == "nightly"
    assert plan.step_config("train").train.epochs == 2 and plan.step_config("train").search is None
    assert plan.step_config("sweep").train.epochs == 1


def test_unknown_key_is_located(tmp_path):
    path = write(tmp_path, PIPELINE + "promote_margn: 0.1\n")
    with pytest.raises(ConfigError) as error:
        make_plan(path)
    message = str(error.value)
    assert f"{path}:9:1: promote_margn: unknown key" in message and "promote_margin" in message


@pytest.mark.parametrize("change, expected", [
    ("steps: [train, sweep]", "in the order sweep, train"),
    ("steps: [sweep, promote]", "step 'promote' needs a registered"),
    ("steps: [register]", "step 'register' needs an encoder"),
    ("steps: [sweep, {evaluate: {set: [a=1]}}]", "takes no overrides"),
    ("schedule: '61 * * *'", "not a cron expression"),
    ("promote_margin: -0.1", "promote_margin"),
])
def test_bad_pipelines_are_refused(tmp_path, change, expected):
    key = change.split(":")[0]
    text = "\n".join(line for line in PIPELINE.splitlines() if not line.startswith(key + ":")) + f"\n{change}\n"
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        make_plan(write(tmp_path, text))


def test_bad_step_override_is_refused_before_work(tmp_path):
    text = PIPELINE.replace("steps: [sweep, train", "steps: [sweep, {train: {set: [train.epochs=0]}}")
    with pytest.raises(ConfigError, match=r"(?s)steps: train: .*--set: train.epochs: Input should be greater than or equal to 1"):
        make_plan(write(tmp_path, text))


def test_run_keys():
    at = dt.datetime(2025, 1, 31, 2, 59, 30, tzinfo=UTC)
    assert default_run_key("0 3 * * *", at) == "2025-01-30T03:00Z"  # before today's tick: yesterday's
    assert default_run_key("0 3 * * *", at.replace(hour=3, minute=0, second=20)) == "2025-01-31T03:00Z"  # at it
    assert default_run_key("*/15 * * * *", at) == "2025-01-31T02:45Z"
    assert default_run_key(None, at) == "2025-01-31"
    assert fill("s3://b/{date}/part-{run_key}.parquet", "2025-01-31T03:00Z") == "s3://b/2025-01-31/part-2025-01-31T03:00Z.parquet"


def test_run_key_template_in_data_uri(tmp_path):
    folder = tmp_path / "2025-01-31"
    folder.mkdir()
    os.symlink(SAMPLE, folder / "sample.parquet")
    text = PIPELINE.replace("set: [train.epochs=1]", f"set: [train.epochs=1, 'data.uri={tmp_path}/{{date}}/sample.parquet']")
    plan = make_plan(write(tmp_path, text), run_key="2025-01-31")
    assert plan.config.data.uri == f"{tmp_path}/2025-01-31/sample.parquet"
    with pytest.raises(ConfigError, match="no such file"):  # another day's partition does not exist
        make_plan(write(tmp_path, text), run_key="2025-02-01")


def test_bad_run_key(tmp_path):
    with pytest.raises(ConfigError, match="--run-key"):
        make_plan(write(tmp_path, PIPELINE), run_key="a'b")


@pytest.mark.parametrize("candidate, champion, margin, promoted", [
    (0.5, None, 0.0, True), (0.5, 0.4, 0.0, True), (0.4, 0.4, 0.0, False), (0.3, 0.4, 0.0, False),
    (0.45, 0.4, 0.1, False), (0.55, 0.4, 0.1, True)])
def test_gate(candidate, champion, margin, promoted):
    reason = gate(candidate, champion, margin)
    assert (reason is None) == promoted
    if not promoted:
        assert f"{candidate:.4f}" in reason and f"{champion:.4f}" in reason


HOLD = """
import sys, time
from pipelines.lock import PipelineLock
lock = PipelineLock(sys.argv[1], "unit", "K1").acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_lock_between_processes(tmp_path):
    path = str(tmp_path / "locks" / "unit.pipeline.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineLocked) as error:
            PipelineLock(path, "unit", "K2").acquire()
        assert error.value.holder["pid"] == holder.pid and error.value.holder["run_key"] == "K1"
        assert f"pid {holder.pid}" in str(error.value) and "since" in str(error.value)
        holder.kill()  # SIGKILL: the kernel frees the flock; the file still names the dead holder
        holder.wait()
        lock = PipelineLock(path, "unit", "K2").acquire()
        assert f"a dead holder (host {os.uname().nodename}, pid {holder.pid}" in lock.took_over()
        lock.release()
        again = PipelineLock(path, "unit", "K3").acquire()  # released cleanly: nothing taken over
        assert again.took_over() is None
        again.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


HOLD_LEASE = """
import sys, time
from pipelines.lock import PipelineLock
lock = PipelineLock(sys.argv[1], "unit", "K1", lease_url=sys.argv[2], lease_seconds=600).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.slow  # `sslab pipeline run` processes
def test_lock_across_hosts_is_the_lease(tmp_path):
    """Two hosts share no filesystem (each its own lock folder) but one database: the lease refuses the
    second while the first lives, through the CLI as well (exit status 3, naming the holder)."""
    database = f"sqlite:///{tmp_path}/shared.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(tmp_path / "host-a" / "unit.pipeline.lock"),
                               database], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineLocked) as error:
            PipelineLock(str(tmp_path / "host-b" / "unit.pipeline.lock"), "unit", "K2", lease_url=database).acquire()
        assert error.value.holder["pid"] == holder.pid and "lease" in str(error.value) and "expires in" in str(error.value)
        path = write(tmp_path, PIPELINE + f"lock_dir: {tmp_path / 'host-c'}\nlease_database: {database}\n")
        started = time.time()
        done = subprocess.run([os.path.join(BIN, "sslab"), "pipeline", "run", path, "--run-key", "K3"],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == LOCKED and time.time() - started < 10, done.stderr
        assert f"pid {holder.pid}" in done.stderr and "run_key K1" in done.stderr
    finally:
        holder.kill()
        holder.wait()
    # killed on this host: its lease is taken over at once, and the taker says whose it was
    lock = PipelineLock(str(tmp_path / "host-b" / "unit.pipeline.lock"), "unit", "K2", lease_url=database).acquire()
    try:
        assert f"pid {holder.pid}" in lock.took_over() and "run key K1" in lock.took_over()
    finally:
        lock.release()


def test_where_the_lease_lives(tmp_path):
    path = write(tmp_path, PIPELINE)
    assert make_plan(path, run_key="K").lease_url() is None  # the default SQLite study: one host, the file lock
    server = "postgresql://sslab@db.example:5432/optuna"
    assert make_plan(path, [f"search.storage={server}"], run_key="K").lease_url() == server
    assert make_plan(path, [f"search.storage={server}", "pipeline.lease_database=none"], run_key="K").lease_url() is None
    other = f"sqlite:///{tmp_path}/leases.db"
    assert make_plan(path, [f"pipeline.lease_database={other}"], run_key="K").lease_url() == other
    with pytest.raises(ConfigError, match="lease_database"):
        make_plan(path, ["pipeline.lease_database=not a url"], run_key="K")


@pytest.mark.slow  # `sslab pipeline` processes
def test_cli_locked_status_and_bad_input(tmp_path):
    lock_dir = tmp_path / "locks"
    text = PIPELINE + f"lock_dir: {lock_dir}\n"
    path = write(tmp_path, text)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_dir / "unit.pipeline.lock")],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.time()
        done = subprocess.run([os.path.join(BIN, "sslab"), "pipeline", "run", path, "--run-key", "K2"],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == LOCKED, done.stderr
        assert time.time() - started < 10
        assert f"pid {holder.pid}" in done.stderr and "run_key K1" in done.stderr
    finally:
        holder.kill()
        holder.wait()
    bad = subprocess.run([os.path.join(BIN, "sslab"), "pipeline", "run", path, "--set", "pipeline.steps=[promote]"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "promote" in bad.stderr


def test_dead_step_is_failed_and_finished_steps_are_read_back(tmp_path):
    from pipelines.record import PipelineRecord

    text = PIPELINE.replace("config: ", "config: ") + ""
    path = write(tmp_path, text)
    plan = make_plan(path, [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], run_key="K1")
    record = PipelineRecord(plan)
    done = record.start("sweep")
    record.finish(done, {"best_params": {"workload.temperature": 0.3}}, {"best/x": 0.5})
    dead = record.start("train")  # a process that died in the train step left it RUNNING
    assert record.finished("sweep") == {"best_params": {"workload.temperature": 0.3}}
    assert record.finished("train") is None
    assert record.settle_dead() == ["train"]
    run = record.client.get_run(dead)
    assert run.info.status == "FAILED" and "died" in run.data.tags["sslab.error"]
    assert run.data.tags["sslab.pipeline"] == "unit" and run.data.tags["sslab.run_key"] == "K1"
    assert run.data.tags["sslab.step"] == "train" and run.data.tags["sslab.kind"] == "pipeline_step"
    assert PipelineRecord(make_plan(path, [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], run_key="K2")).finished("sweep") is None
