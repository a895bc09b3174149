"""Real services for the tests, started on 127.0.0.1 by this session and stopped by pid."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from orchestrator.ray_runtime import use_local_train_env
from orchestrator.tracking.sqlite_template import prepare_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "examples", "data", "cifar10_sample.parquet")
BIN = os.path.dirname(sys.executable)
# What ensure_ray sets for a local instance, here for every Ray the tests start (the fixture's, the
# clusters' in subprocesses inherit it).
use_local_train_env()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def stop(process: subprocess.Popen) -> None:
    """Stop the process group we started (the server and its workers), by pid."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", log_to_driver=True)
    yield ray
    ray.shutdown()


def start_mlflow_server(folder, backend: str, artifacts: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 (a free port), logging to folder/server.log: (process, its URL).
    Without MLflow's job runner: sslab runs no server-side jobs, and its ~7 huey consumer processes
    (each importing MLflow) cost seconds of CPU per server on 2 cores."""
    prepare_store(backend)  # a SQLite backend: a copy of a migrated store, not MLflow's migrations at start
    port = free_port()
    process = subprocess.Popen(
        [os.path.join(BIN, "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend, "--artifacts-destination", artifacts],
        env={**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=open(os.path.join(folder, "server.log"), "w"), stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server process with a SQLite backend, serving artifacts."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    process, url = start_mlflow_server(folder, f"sqlite:///{folder}/mlflow.db", str(folder / "artifacts"))
    try:
        wait_http(f"{url}/health", process)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode: a real S3-compatible endpoint on loopback."""
    port = free_port()
    process = subprocess.Popen([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        wait_http(url, process)
        yield url
    finally:
        stop(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def images():
    """The first 256 sample images, normalised as the encoders see them."""
    from workloads.data.load import load_images
    from workloads.pretext.base import normalize

    return normalize(load_images(SAMPLE).images[:256].float() / 255)


@pytest.fixture
def one_thread():
    """One intra-op thread: on the small, shared test machines more threads only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder (MLflow's sqlite file, Ray storage) with the sample reachable."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("examples/data", exist_ok=True)
    shutil.copy(SAMPLE, "examples/data/cifar10_sample.parquet")
    return tmp_path


SMALL_PER_CLASS = 100  # SMALL_SAMPLE: 1,000 of the sample's 5,000 images


def write_small_sample(target: str, per_class: int = SMALL_PER_CLASS, seed: int = 0) -> str:
    """A stratified subset of SAMPLE: `per_class` rows of each class chosen with a fixed seed, kept in the
    sample's order, its schema (the class names in its metadata) kept, written as the sample is (one row
    group, uncompressed). For the end-to-end tests that check the record (statuses, params, tags,
    artifacts, metric names and counts, locks, resumption, failures), not what the encoder learns: an
    epoch and the final evaluation over it cost about a fifth of the sample's."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(SAMPLE)
    labels = table.column("label").to_numpy()
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                             for c in np.unique(labels)])
    small = table.take(pa.array(np.sort(picked)))
    assert small.schema.metadata == table.schema.metadata
    pq.write_table(small, target, row_group_size=len(small), compression="none")
    return target


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory) -> str:
    """SMALL_SAMPLE, written once per session: the path of a 1,000-image stratified subset of the sample
    (100 per class), named like the sample (cifar10_sample.parquet, so a run's dataset name is the same)."""
    return write_small_sample(str(tmp_path_factory.mktemp("small_sample") / "cifar10_sample.parquet"))


@pytest.fixture
def small_data(workdir, small_sample):
    """The test's workdir with SMALL_SAMPLE in place of the sample, at the sample's path
    (examples/data/cifar10_sample.parquet), for the record-only end-to-end tests."""
    shutil.copy(small_sample, workdir / "examples" / "data" / "cifar10_sample.parquet")
    return workdir


def marked_processes(marker: str, tag: str, path: str) -> dict[int, str]:
    """Live processes started by a test (any generation): those whose environment holds marker=tag, or
    whose command line names `path` (the private Ray temp dir). {pid: command line}."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat") as handle:
                zombie = handle.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:  # gone, or not ours to read
            continue
        if not zombie and (f"{marker}={tag}".encode() in environ or path in cmdline):
            found[int(entry)] = cmdline
    return found


def wait_gone(find, seconds: float, ignoring: tuple[str, ...] = ()) -> dict[int, str]:
    """Poll find() ({pid: command line}) until nothing but commands in `ignoring` is left, at most
    `seconds`; what is left."""
    deadline = time.time() + seconds
    while (left := {p: c for p, c in find().items() if c not in ignoring}) and time.time() < deadline:
        time.sleep(0.5)
    return left


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class MarkedCommand:
    """A command (sslab sweep, sslab pipeline run) in a session of its own, with a private Ray temp dir and
    a marker in its environment (inherited by every Ray process it starts), so that everything it
    started can be found, and killed, by pid."""

    MARKER = "SSLAB_TEST_MARKED_COMMAND"

    def __init__(self, workdir, env: dict | None = None):
        import tempfile
        import uuid

        self.workdir, self.env = workdir, env or {}
        self.tag = uuid.uuid4().hex
        self.ray_tmp = tempfile.mkdtemp(prefix="sslab-marked-", dir="/tmp")  # short: Ray's socket paths
        self.process, self.log = None, None

    def run(self, command: list[str], log_name: str, stdout=None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(self.env | {self.MARKER: self.tag, "RAY_TMPDIR": self.ray_tmp})
        self.log = self.workdir / log_name
        self.process = subprocess.Popen(command, cwd=self.workdir, env=env, start_new_session=True, text=True,
                                        stdout=stdout or open(self.log, "w"),
                                        stderr=open(self.log, "w") if stdout else subprocess.STDOUT)
        return self.process

    def tail(self) -> str:
        return self.log.read_text()[-6000:] if self.log is not None and self.log.exists() else ""

    def processes(self) -> dict[int, str]:
        """The live processes it started (any generation): {pid: command line}."""
        return marked_processes(self.MARKER, self.tag, self.ray_tmp)

    def wait_processes_gone(self, seconds: float, ignoring: tuple[str, ...] = ()) -> dict[int, str]:
        return wait_gone(self.processes, seconds, ignoring)

    def kill_all(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        kill_pids(self.processes())
        self.wait_processes_gone(10)

    def close(self) -> None:
        self.kill_all()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def run_cluster_script(script: str, args: list[str], cwd: str, timeout: float = 420) -> dict:
    """Run a script that builds its own ray.cluster_utils.Cluster, in a subprocess of its own.

    It prints one line `RESULT <json>`; that JSON is returned. The process group is killed on timeout.
    """
    import json
    import tempfile

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    # ray.init(address="127.0.0.1:port") rewrites a loopback address to the machine's outward IP,
    # where the loopback-bound cluster does not listen; with this switch off, Ray's
    # get_node_ip_address() answers 127.0.0.1.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # A Cluster writes its address to <ray temp dir>/ray_current_cluster, where other Ray
    # instances would look: keep it (and the session files) in a private temp dir.
    private = tempfile.mkdtemp(prefix="sslab-ray-", dir="/tmp")
    env["RAY_TMPDIR"] = private
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    process = subprocess.Popen([sys.executable, "-c", script, *args], cwd=cwd, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise AssertionError(f"the cluster script did not finish in {timeout} s:\n{out[-4000:]}")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    # Ray's log lines and the script's print share stdout: the RESULT may follow a log line unbroken
    lines = [line[line.index("RESULT {"):] for line in out.splitlines() if "RESULT {" in line]
    assert process.returncode == 0 and lines, out[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


# ---- the production stack: PostgreSQL + MLflow server on it (artifacts on S3) + Optuna on it + S3 ----------

def postgres_bindir() -> str | None:
    """Debian's PostgreSQL programs (initdb, postgres), the newest installed version; None if none is."""
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


class Postgres:
    """A PostgreSQL server of this test session: user `sslab`, no password (trust, on 127.0.0.1 only)."""

    def __init__(self, port: int):
        self.port = port

    def url(self, database: str) -> str:
        return f"postgresql://sslab@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL (for a test that wants a study or a tracking store of its own)."""
        import psycopg

        connection = psycopg.connect(self.url("postgres"), autocommit=True)
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """Debian's PostgreSQL: initdb and the postmaster in a temporary folder, on 127.0.0.1, stopped by pid."""
    import tempfile

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed: .ci/run installs Debian's postgresql (apt-get install postgresql)")
    folder = tempfile.mkdtemp(prefix="sslab-postgres-", dir="/tmp")
    as_user = {}
    if os.geteuid() == 0:  # the postmaster refuses to run as root: run it as the package's postgres user
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data = os.path.join(folder, "data")
    subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-U", "sslab", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], cwd=folder, check=True, capture_output=True, **as_user)
    port = free_port()
    process = subprocess.Popen(
        [os.path.join(bindir, "postgres"), "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", folder,
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
        cwd=folder, stdout=open(os.path.join(folder, "postgres.log"), "w"), stderr=subprocess.STDOUT,
        start_new_session=True, **as_user)
    server = Postgres(port)
    try:
        import psycopg

        deadline = time.time() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"postgres exited with {process.returncode}: "
                                   f"{open(os.path.join(folder, 'postgres.log')).read()[-2000:]}")
            try:
                psycopg.connect(server.url("postgres"), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)  # the postmaster's fast shutdown: ends its backends too
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


class ProductionStack:
    """What a test needs to point sslab at the stack: the URLs, and the environment its processes need
    (moto's credentials, the S3 endpoint for MLflow, boto3 and pyarrow). No secret: moto's are dummies."""

    def __init__(self, tracking_uri: str, optuna_storage: str, storage_path: str, s3_endpoint: str, bucket: str,
                 postgres: Postgres):
        self.tracking_uri, self.optuna_storage, self.storage_path = tracking_uri, optuna_storage, storage_path
        self.s3_endpoint, self.bucket, self.postgres = s3_endpoint, bucket, postgres
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint,
                    "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}

    def sets(self) -> list[str]:
        """--set overrides that send a config's records to the stack."""
        return [f"tracking.uri={self.tracking_uri}", f"search.storage={self.optuna_storage}",
                f"storage.path={self.storage_path}"]


@pytest.fixture(scope="session")
def production_stack(postgres_server, s3_server, tmp_path_factory):
    """PostgreSQL (MLflow's store and the Optuna study), an MLflow tracking server on it with artifacts on
    moto (--artifacts-destination s3://), and s3:// storage for Ray Train checkpoints; all on 127.0.0.1."""
    import unittest.mock

    import boto3

    bucket = "sslab-stack"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    tracking_store = postgres_server.create_database("mlflow")
    optuna_storage = postgres_server.create_database("optuna")
    stack = ProductionStack("", optuna_storage, f"s3://{bucket}/ray", s3_server, bucket, postgres_server)
    folder = tmp_path_factory.mktemp("mlflow_stack")
    process, stack.tracking_uri = start_mlflow_server(folder, tracking_store, f"s3://{bucket}/mlflow", stack.env)
    # this process's clients (boto3, pyarrow, MLflow) reach moto too, for the session; restored after
    with unittest.mock.patch.dict(os.environ, stack.env):
        try:
            try:
                wait_http(f"{stack.tracking_uri}/health", process, seconds=120)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{error}:\n{(folder / 'server.log').read_text()[-3000:]}") from None
            yield stack
        finally:
            stop(process)
