"""Dead services: found before any work (a clear error within 15 s naming the setting and the address,
never a password), and a tracking server that dies mid-run fails the run within a bounded time with
its checkpoints intact. Real servers (moto, MLflow) started here and killed by pid."""
import glob
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import BIN, ROOT, SAMPLE, MarkedCommand, free_port, start_mlflow_server, stop, wait_http
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import load_config
from orchestrator.config.local_paths import with_absolute_paths
from orchestrator.services import CHECK_SECONDS, ServiceError, check_services

PASSWORD = "pw-7f3a-not-for-logs"
TINY = [f"data.uri={SAMPLE}", "train.batch_size=128", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.progress=false", "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false"]
NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", "AWS_CONFIG_FILE": "/nonexistent/config",
                  "AWS_EC2_METADATA_DISABLED": "true"}


def start_moto(env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:  # any HTTP answer will do: with authentication on, moto answers 403
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            assert process.poll() is None and time.time() < deadline, "moto_server did not start"
            time.sleep(0.3)
    return process, url


def dead_address() -> str:
    """A loopback port nothing listens on (a server that went away)."""
    return f"127.0.0.1:{free_port()}"


def checked(config, seconds: float = CHECK_SECONDS) -> str:
    """check_services' error message, and that it came within the bound."""
    started = time.monotonic()
    with pytest.raises(ServiceError) as raised:
        check_services(with_absolute_paths(config))
    assert time.monotonic() - started < seconds + 1
    return str(raised.value)


def test_s3_credentials_missing_refused_and_a_dead_endpoint_are_named(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    # moto with IAM authentication on from the first request: unknown keys are refused (403)
    moto, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        config = load_config(f"{ROOT}/examples/quickstart.yaml", TINY + ["storage.path=s3://runs/ray", "name=s3"])
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        refused = checked(config)
        assert f"storage.path: s3://runs/ray: credentials for s3://runs are refused by {endpoint} (403)" in refused
        assert "wrong-secret" not in refused
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        for key, value in NO_CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        missing = checked(config)
        assert "storage.path: s3://runs/ray: credentials for s3://runs are missing: set AWS_ACCESS_KEY_ID" in missing
    finally:
        stop(moto)
    # the same endpoint, its server gone
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    dead = checked(config)
    assert f"storage.path: s3://runs/ray: cannot reach the S3 endpoint {endpoint}" in dead


@pytest.mark.slow
def test_dead_tracking_database_and_s3_stop_a_sweep_before_any_work(tmp_path):
    """`sslab sweep` with every service dead: exit 2 within the check's bound, each setting and address
    named, the database password nowhere, no traceback, nothing started (no Ray, no local store)."""
    moto, endpoint = start_moto()
    stop(moto)  # an S3 endpoint that went away
    tracking, database = dead_address(), dead_address()
    sets = TINY + ["name=dead", f"tracking.uri=http://{tracking}", "storage.path=s3://runs/ray",
                   f"search.storage=postgresql://sslab:{PASSWORD}@{database}/optuna"]
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([os.path.join(BIN, "sslab"), "sweep", f"{ROOT}/examples/quickstart.yaml",
                          *[arg for s in sets for arg in ("--set", s)]],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-4000:]
    assert "Traceback" not in out.stderr and PASSWORD not in out.stderr + out.stdout, out.stderr[-4000:]
    assert f"tracking.uri: http://{tracking}: no answer ([Errno 111] Connection refused)" in out.stderr
    assert f"search.storage: postgresql://sslab:***@{database}/optuna: cannot connect" in out.stderr
    assert f"storage.path: s3://runs/ray: cannot reach the S3 endpoint {endpoint}" in out.stderr
    took = float(re.search(r"checked before any work, ([\d.]+) s", out.stderr)[1])
    assert took < CHECK_SECONDS
    assert os.listdir(tmp_path) == [], "the sweep made files before its services were checked"


def test_train_checks_before_its_mlflow_run_starts(tmp_path, monkeypatch):
    """run_training with a dead S3 storage.path: ServiceError, and no MLflow run was opened for it."""
    from orchestrator.training.run import run_training

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{dead_address()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = load_config(f"{ROOT}/examples/quickstart.yaml", TINY + ["name=deadstore", "storage.path=s3://runs/ray"])
    with pytest.raises(ServiceError, match=r"storage.path: s3://runs/ray: cannot reach the S3 endpoint"):
        run_training(config)
    assert not os.path.exists(tmp_path / "mlflow.db") or \
        MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("deadstore") is None


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_fails_the_run_in_bounded_time_and_keeps_its_checkpoints(tmp_path, small_sample):
    folder = tmp_path / "server"
    folder.mkdir()
    server, url = start_mlflow_server(folder, f"sqlite:///{folder}/mlflow.db", str(folder / "artifacts"))
    work = tmp_path / "work"
    work.mkdir()
    command = MarkedCommand(work)
    try:
        wait_http(f"{url}/health", server, seconds=300)  # a loaded machine starts it slowly
        # SMALL_SAMPLE (the record, not learning): the server is killed after the first of the 30 epochs
        sets = TINY + [f"data.uri={small_sample}", "train.epochs=30", "name=midrun", f"tracking.uri={url}",
                       f"storage.path={work}/runs"]
        train = command.run([os.path.join(BIN, "sslab"), "train", f"{ROOT}/examples/quickstart.yaml",
                             *[arg for s in sets for arg in ("--set", s)]], "train.log")
        client = MlflowClient(url)
        deadline = time.time() + 300
        while time.time() < deadline and train.poll() is None:
            experiment = client.get_experiment_by_name("midrun")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 1:
                break
            time.sleep(0.5)
        assert train.poll() is None, f"the run ended before the server was killed:\n{command.tail()}"
        stop(server)  # the tracking server goes away, mid-run
        killed = time.monotonic()
        train.wait(300)
        took = time.monotonic() - killed
    finally:
        stop(server)
        command.close()
    log = command.tail()
    print(f"the run failed {took:.1f} s after its tracking server was killed; its last line: {log.strip().splitlines()[-1]}")
    assert train.returncode != 0, log
    # MLflow's own retries, bounded by sslab's defaults (4 retries, 0+2+4+8 s back-off): without them one
    # call alone retries 7 times over about 4 minutes
    assert took < 150, f"the run took {took:.0f} s to fail after its tracking server died:\n{log}"
    assert url.removeprefix("http://") in log and ("Connection refused" in log or "Max retries exceeded" in log), log
    # the command's own last word is one line, not a traceback (Ray's worker logs above may hold theirs)
    assert log.strip().splitlines()[-1].startswith("sslab train: the run failed: a service stopped answering"), log
    from orchestrator.training.state import load_state

    folders = sorted(glob.glob(f"{work}/runs/midrun-*/checkpoint_*/"))
    assert folders, f"no checkpoint was written:\n{log}"
    states = [load_state(folder) for folder in folders]
    assert all(state is not None and state["epoch"] >= 0 for state in states)
