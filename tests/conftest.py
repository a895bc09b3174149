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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server process with a SQLite backend, serving artifacts."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    process = subprocess.Popen(
        [os.path.join(BIN, "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts")],
        stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
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
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, out[-4000:]
    return json.loads(lines[-1][len("RESULT "):])
