"""`sslab sweep --address`: a sweep submitted as a Ray job to a real 2-node cluster on this machine.

The cluster (a head and a worker node, 1 CPU each, on 127.0.0.1, free ports, a private temp dir)
lives in a process of its own; stopping it is terminating that process, and then anything still
alive that belongs to it (found by a marker in its environment, which every Ray process inherits,
or the private temp dir in its command line) is killed by pid.
The sweep runs from a project folder that is not sslab's repository: sslab's code travels as
py_modules, the config and the data with the working directory; MLflow is a tracking server,
the study and the checkpoints on absolute paths (one machine: every node sees them).
A secret rides along: the password of the tracking URI and of a PostgreSQL study's URL, given as
${NAME} references whose variables the cluster's nodes have (as from a Kubernetes secret).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid

import pytest
import yaml
from conftest import BIN, SAMPLE, free_port, kill_pids, marked_processes, wait_gone
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

MARKER = "SSLAB_TEST_CLUSTER_SWEEP"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# A head and a worker node on 127.0.0.1 (ray.cluster_utils.Cluster), until SIGTERM. Not two `ray start`
# processes: on loopback Ray 2.60's `ray start --address` either aborts (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
# "multi-node clusters are not supported") or rewrites 127.0.0.1 to the machine's outward IP, where a
# loopback-bound head does not listen.
CLUSTER = textwrap.dedent("""
    import json, signal, sys
    from ray.cluster_utils import Cluster
    gcs_port, dashboard_port, agent_port = map(int, sys.argv[1:4])
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, node_ip_address="127.0.0.1", gcs_server_port=gcs_port, include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=dashboard_port, dashboard_agent_listen_port=agent_port))
    def stop(*_):
        cluster.shutdown()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    print("READY", json.dumps({"dashboard": cluster.webui_url, "gcs": cluster.gcs_address}), flush=True)
    signal.pause()
""")


class RayCluster:
    """A 2-node Ray cluster with token authentication, in a process (and session) of its own; `env`: variables
    every node has (the secrets a submitted sweep names by ${NAME})."""

    def __init__(self, env: dict | None = None):
        self.tag = uuid.uuid4().hex
        self.token = uuid.uuid4().hex + uuid.uuid4().hex
        self.temp = tempfile.mkdtemp(prefix="sslab-rc-", dir="/tmp")  # short: Ray's socket paths
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: ray.init(address=loopback), as in a job's driver, would otherwise
        # rewrite 127.0.0.1 to the machine's outward IP (see conftest).
        self.env.update({MARKER: self.tag, "RAY_TMPDIR": self.temp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                         "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "RAY_USAGE_STATS_ENABLED": "0",
                         "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **(env or {})})  # every node's
        self.secret_env = env or {}
        self.dashboard_port = free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RayCluster":
        self.log = open(os.path.join(self.temp, "cluster.log"), "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLUSTER, str(free_port()), str(self.dashboard_port), str(free_port())],
            cwd=self.temp, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while "READY" not in self.log_tail() or len(self.node_ids()) < 2:
            assert self.process.poll() is None, f"the cluster exited:\n{self.log_tail()}"
            assert time.time() < deadline, f"the cluster did not start within 180 s\n{self.log_tail()}"
            time.sleep(1)
        return self

    def sslab(self, *args, cwd, token: bool = True) -> subprocess.CompletedProcess:
        """The sslab command against this cluster, with its token supplied the way Ray reads it (or none)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))} | self.secret_env
        if token:
            env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token})
        return subprocess.run([os.path.join(BIN, "sslab"), *args, "--address", self.dashboard], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=240)

    def client(self):
        """Ray's JobSubmissionClient in this process, the token passed as a header (documented `headers`)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.token}"})

    def api(self, path: str) -> list:
        """A list from the dashboard's state API (/api/v0/...)."""
        request = urllib.request.Request(f"{self.dashboard}/api/v0/{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)["data"]["result"]["result"]

    def node_ids(self) -> set[str]:
        try:
            return {node["node_id"] for node in self.api("nodes?limit=100") if node["state"] == "ALIVE"}
        except OSError:  # not up yet
            return set()

    def log_tail(self) -> str:
        with open(os.path.join(self.temp, "cluster.log")) as handle:
            return handle.read()[-3000:]

    def leftovers(self) -> dict[int, str]:
        """Live processes of this cluster (any generation): {pid: command line}."""
        return marked_processes(MARKER, self.tag, self.temp)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)  # the script shuts its nodes down
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        kill_pids(wait_gone(self.leftovers, 10))  # e.g. a job's driver, in a session of its own: by pid
        time.sleep(1)
        assert not self.leftovers(), f"processes of the test cluster still alive: {self.leftovers()}"
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def secret(mlflow_server, postgres_server) -> dict:
    """A secret planted as the password of the MLflow server's URL and of a PostgreSQL database's URL (the
    server has no auth and the test PostgreSQL trusts 127.0.0.1: both take any password), as the values of
    variables that the cluster's nodes and the submitting shell have."""
    value = f"s3cr3t-{uuid.uuid4().hex}"
    database = postgres_server.create_database(f"optuna_cluster_{uuid.uuid4().hex[:8]}")
    return {"value": value, "env": {
        "SSLAB_TEST_TRACKING_URI": mlflow_server.replace("http://", f"http://sslab:{value}@"),
        "SSLAB_TEST_OPTUNA_DB": database.replace("postgresql://sslab@", f"postgresql://sslab:{value}@")},
        "database": database}


@pytest.fixture(scope="module")
def cluster(secret):
    ray_cluster = RayCluster(secret["env"])
    try:
        yield ray_cluster.start()
    finally:
        ray_cluster.stop()


def project(tmp_path, mlflow_server, name: str, epochs: int, n_trials: int = 2, tracking: str | None = None) -> str:
    """A project folder (not sslab's repository) with a tiny sweep and the sample data inside it."""
    folder, shared = tmp_path / "project", tmp_path / "shared"
    os.makedirs(folder / "data"), os.makedirs(shared)
    shutil.copy(SAMPLE, folder / "data" / "sample.parquet")
    config = {
        "name": name, "seed": 0,
        "data": {"uri": "data/sample.parquet#split=val&val_fraction=0.2&seed=0", "val_fraction": 0.2},  # 1000 images
        "model": {"backbone": "small_convnet", "width": 8, "projection_hidden_dim": 32, "projection_dim": 16},
        "train": {"epochs": epochs, "batch_size": 128, "progress": False},
        "eval": {"knn_k": 20, "linear_probe": False, "embedding_map_points": 100},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "tracking": {"uri": tracking or mlflow_server}, "storage": {"path": str(shared / "runs")},
        "search": {"objective": "downstream/knn_top1", "sampler": "random", "pruner": "none", "n_trials": n_trials,
                   "max_concurrent_trials": 2, "storage": f"sqlite:///{shared}/optuna.db",
                   "space": {"workload.temperature": {"type": "float", "low": 0.1, "high": 1.0, "log": True}}},
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return str(folder)


def wait_job(cluster: RayCluster, job_id: str, seconds: float = 360) -> str:
    """The job's terminal status (polled in this process: a `sslab status` process per poll costs CPU)."""
    client, deadline = cluster.client(), time.time() + seconds
    while (status := str(client.get_job_status(job_id))) not in TERMINAL:
        assert time.time() < deadline, f"{job_id} {status} after {seconds} s:\n{client.get_job_logs(job_id)[-4000:]}"
        time.sleep(2)
    return status


def runs_of(mlflow_server: str, experiment: str) -> list:
    client = MlflowClient(mlflow_server)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def wait_for_run(mlflow_server: str, experiment: str, kind: str, cluster: RayCluster, job_id: str) -> None:
    deadline = time.time() + 240
    while not any(r.data.tags.get("sslab.kind") == kind and r.info.status == "RUNNING"
                  for r in runs_of(mlflow_server, experiment)):
        assert time.time() < deadline, f"no {kind} run RUNNING:\n{cluster.client().get_job_logs(job_id)[-4000:]}"
        time.sleep(2)


def test_a_submitted_sweep_runs_its_trials_on_both_nodes(cluster, mlflow_server, secret, tmp_path, tmp_path_factory):
    """... and the secret it was given (tracking.uri in the config file, search.storage in an override, both
    ${NAME} references) is nowhere: not in the job (entrypoint, runtime_env, logs), the MLflow store
    (database, artifacts) or the study's database."""
    cwd = project(tmp_path, mlflow_server, "clustersweep", epochs=1, tracking="${SSLAB_TEST_TRACKING_URI}")
    storage = "search.storage=${SSLAB_TEST_OPTUNA_DB}"
    submitted = cluster.sslab("sweep", "sweep.yaml", "--set", storage, cwd=cwd)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("sslab-clustersweep-"), submitted.stdout
    assert f"sslab status {job_id} --address {cluster.dashboard}" in submitted.stderr
    assert "note: storage.path" in submitted.stderr and "every node" in submitted.stderr

    # guard (a), at submission: the study has a job pending or running
    again = cluster.sslab("sweep", "sweep.yaml", "--set", storage, cwd=cwd)
    assert again.returncode == 2 and job_id in again.stderr and "already has a driver" in again.stderr, again.stderr
    table = cluster.sslab("status", cwd=cwd)
    assert table.returncode == 0 and job_id in table.stdout and "clustersweep" in table.stdout, table.stdout

    assert wait_job(cluster, job_id) == "SUCCEEDED", cluster.client().get_job_logs(job_id)[-4000:]
    status = cluster.sslab("status", job_id, cwd=cwd)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED  (study clustersweep)"), status.stdout
    runs = runs_of(mlflow_server, "clustersweep")
    parents = [r for r in runs if r.data.tags.get("sslab.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("sslab.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"], [r.info.status for r in trials]
    nodes = {node for r in trials for node in r.data.tags["sslab.worker_nodes"].split(",")}
    assert nodes == cluster.node_ids(), "the two concurrent trials ran one on each node"
    logs = cluster.sslab("logs", job_id, cwd=cwd)
    assert logs.returncode == 0 and f'"parent_run_id": "{parents[0].info.run_id}"' in logs.stdout, logs.stdout[-3000:]

    # the secret is nowhere. The job: the reference travelled, not the value
    job = cluster.client().get_job_info(job_id)
    assert "'search.storage=${SSLAB_TEST_OPTUNA_DB}'" in job.entrypoint, job.entrypoint
    shown = repr(job) + json.dumps(job.runtime_env) + logs.stdout + submitted.stdout + submitted.stderr
    assert secret["value"] not in shown
    # the MLflow store: every file of the server (its SQLite database, artifacts, log), where the params hold the
    # masked URL (so the search reads what was recorded)
    masked = secret["env"]["SSLAB_TEST_OPTUNA_DB"].replace(f":{secret['value']}@", ":***@")
    assert parents[0].data.params["search.storage"] == masked
    # conftest's mlflow_server folder (pytest adds a symlink to it, "mlflow_servercurrent")
    [store] = [p for p in tmp_path_factory.getbasetemp().glob("mlflow_server*") if not p.is_symlink()]
    found = {path: path.read_bytes() for path in [*store.rglob("*"), *(tmp_path / "shared").rglob("*")]
             if path.is_file()}
    assert [p for p, body in found.items() if p.name == "mlflow.db" and masked.encode() in body], sorted(found)
    assert [p for p in found if p.name == "encoder.pt"] and [p for p in found if p.name == "resolved_config.yaml"]
    assert not [p for p, body in found.items() if secret["value"].encode() in body]
    # the study's database: every row (attributes included)
    from test_stack import database_text

    rows = database_text(secret["database"])
    assert "clustersweep" in rows and "sslab.objective" in rows and secret["value"] not in rows


def test_a_second_driver_is_refused_and_stop_ends_the_sweep_killed(cluster, mlflow_server, tmp_path):
    cwd = project(tmp_path, mlflow_server, "stopsweep", epochs=200)
    submitted = cluster.sslab("sweep", "sweep.yaml", cwd=cwd)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    follower = subprocess.Popen(  # `sslab logs --follow`, from the start: it should end when the job does
        [os.path.join(BIN, "sslab"), "logs", job_id, "--follow", "--address", cluster.dashboard],
        env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_run(mlflow_server, "stopsweep", "trial", cluster, job_id)

    # guard (b), in the driver: a second driver of the study, submitted past guard (a) with the same
    # entrypoint and uploaded runtime_env, stops at the coordinator's name before touching the study
    client = cluster.client()
    first = client.get_job_info(job_id)
    duplicate = client.submit_job(entrypoint=first.entrypoint, runtime_env=first.runtime_env)
    duplicate_logs = lambda: client.get_job_logs(duplicate)  # noqa: E731
    assert wait_job(cluster, duplicate, seconds=180) == "FAILED", duplicate_logs()
    assert f"another driver runs study 'stopsweep' (submission {job_id})" in duplicate_logs(), duplicate_logs()
    assert len([r for r in runs_of(mlflow_server, "stopsweep") if r.data.tags.get("sslab.kind") == "sweep"]) == 1

    stop_requested = time.time()
    stopped = cluster.sslab("stop", job_id, cwd=cwd)
    assert stopped.returncode == 0 and f"{job_id}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    took = client.get_job_info(job_id).end_time / 1000 - stop_requested  # SIGKILL after STOP_GRACE_S
    deadline = time.time() + 180  # 30 s, then 90 s, were not enough on a loaded 2-core machine (measured)
    while True:
        runs = runs_of(mlflow_server, "stopsweep")
        parents = [r.info.status for r in runs if r.data.tags.get("sslab.kind") == "sweep"]
        if parents == ["KILLED"] and not any(r.info.status == "RUNNING" for r in runs):
            break
        summary = [(r.info.run_name, r.info.status, r.data.tags.get("sslab.error")) for r in runs]
        assert time.time() < deadline, f"{summary}\nstopped {took:.0f} s after the request:\n" + client.get_job_logs(job_id)
        time.sleep(1)
    followed, _ = follower.communicate(timeout=60)
    assert follower.returncode == 0 and "Connected to Ray cluster" in followed, followed[-3000:]
    # The stopped driver's coordinator died with it: the study's name is free for the next run (a resume).
    names = [actor.get("name") or "" for actor in cluster.api("actors?limit=1000&filter_keys=state"
                                                                  "&filter_predicates=%3D&filter_values=ALIVE")]
    assert not [name for name in names if name.startswith("study:stopsweep@")], names


def test_without_the_token_the_cluster_refuses_clearly(cluster, mlflow_server, tmp_path):
    cwd = project(tmp_path, mlflow_server, "notokensweep", epochs=1)
    for command in (("sweep", "sweep.yaml"), ("status",)):
        out = cluster.sslab(*command, cwd=cwd, token=False)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr  # docs/reliability.md: bad inputs
        assert "Ray token authentication: the cluster requires a token: set RAY_AUTH_MODE=token" in out.stderr
        assert "RAY_AUTH_TOKEN" in out.stderr and "~/.ray/auth_token" in out.stderr, out.stderr
    assert not [j for j in cluster.client().list_jobs() if (j.metadata or {}).get("sslab.study") == "notokensweep"]


def test_missing_jobs_and_unreachable_clusters_are_clear_errors(cluster, tmp_path):
    for command in ("status", "logs", "stop"):
        out = cluster.sslab(command, "sslab-nope-00000000", cwd=tmp_path)
        assert out.returncode == 2 and "no job 'sslab-nope-00000000'" in out.stderr, (command, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr  # docs/reliability.md: bad inputs
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    nowhere = subprocess.run([os.path.join(BIN, "sslab"), "status", "--address", f"http://127.0.0.1:{free_port()}"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert nowhere.returncode == 2 and "cannot reach a Ray dashboard" in nowhere.stderr, nowhere.stderr


def test_relative_storage_is_refused_before_anything_is_uploaded(cluster, mlflow_server, secret, tmp_path):
    cwd = project(tmp_path, mlflow_server, "refusedsweep", epochs=1)
    out = cluster.sslab("sweep", "sweep.yaml", "--set", "search.storage=null", "--set", "storage.path=runs", cwd=cwd)
    assert out.returncode == 2, out.stderr
    assert "search.storage: null (the default, sqlite:///optuna.db) is a path relative" in out.stderr
    assert "storage.path: 'runs' is a path relative" in out.stderr
    # a secret written out in an override would travel in the entrypoint: refused, named, not shown
    written_out = cluster.secret_env["SSLAB_TEST_OPTUNA_DB"]
    out = cluster.sslab("sweep", "sweep.yaml", "--set", f"search.storage={written_out}", cwd=cwd)
    assert out.returncode == 2 and "--set search.storage: holds a secret written out" in out.stderr, out.stderr
    assert "--set 'search.storage=${SSLAB_SEARCH_STORAGE}'" in out.stderr and secret["value"] not in out.stderr
    assert "Traceback" not in out.stderr
    assert not [j for j in cluster.client().list_jobs() if (j.metadata or {}).get("sslab.study") == "refusedsweep"]
