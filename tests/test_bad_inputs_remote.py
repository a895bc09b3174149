"""The bad-input catalogue, continued: URIs and credentials, checkpoints, cluster addresses
(docs/reliability.md, "Bad inputs"; the shared rules in tests/test_bad_inputs.py's docstring)."""
import os
import subprocess
import sys
import time

import pytest

pytest.register_assert_rewrite("bad_input_helpers")  # its assertions explain themselves too
from bad_input_helpers import (  # noqa: E402
    SEARCH,
    assert_no_work,
    assert_says,
    fails,
    sslab_process,
    write_parquet,
)

pytest_plugins = ["bad_input_helpers"]  # its fixtures: sample, project, encoder
from conftest import ROOT, free_port

# ---- URIs and credentials ----------------------------------------------------------------------------------

URI_CASES = [
    ("data-unsupported-scheme", {"data": {"uri": "ftp://host/data.parquet"}},
     ["data.uri: unsupported scheme 'ftp' in 'ftp://host/data.parquet'; valid: a local .parquet file or image folder, "
      "s3://BUCKET/KEY.parquet or cifar10://ROOT"]),
    ("test-uri-unsupported-scheme", {"data": {"test_fraction": 0, "test_uri": "gs://bucket/test.parquet"}},
     ["data.test_uri: unsupported scheme 'gs'"]),
    ("tracking-unsupported-scheme", {"tracking": {"uri": "ftp://host/mlflow"}},
     ["tracking.uri: Value error, unsupported scheme 'ftp'; valid: sqlite:///FILE.db, http(s)://SERVER:PORT"]),
    ("storage-unsupported-scheme", {"storage": {"path": "ftp://host/runs"}},
     ["storage.path: Value error, unsupported scheme 'ftp'; valid: a local or shared folder, s3://BUCKET/PREFIX"]),
    ("study-storage-unsupported-scheme", {"search": {**SEARCH, "storage": "ftp://host/optuna"}},
     ["search.storage", "is neither journal:PATH nor a database URL SQLAlchemy knows"]),
]


@pytest.mark.parametrize("patch,fragments", [pytest.param(*case[1:], id=case[0]) for case in URI_CASES])
def test_bad_uri(project, capsys, patch, fragments):
    message = fails(capsys, "sweep" if "search" in patch else "train", project(patch))
    assert_says(message, *fragments)
    assert_no_work(project.dir)


def test_an_unreachable_tracking_server_is_named_within_15_s(project, capsys):
    import orchestrator.training.run  # noqa: F401  (imported before the clock starts: only the check is timed)

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    message = fails(capsys, "train", project({"tracking": {"uri": address}}))
    assert time.monotonic() - started < 15, message
    assert_says(message, "tracking.uri", address)
    assert_no_work(project.dir)


def test_a_closed_s3_endpoint_is_named_within_15_s(project, capsys, monkeypatch):
    import orchestrator.training.run  # noqa: F401

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials are there: the endpoint is what is wrong
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    started = time.monotonic()
    message = fails(capsys, "train", project({"data": {"uri": "s3://bad-inputs/data.parquet", "s3_endpoint_url": endpoint}}))
    assert time.monotonic() - started < 15, message
    assert_says(message, "data", endpoint)
    assert_no_work(project.dir)


@pytest.fixture
def s3_data(s3_server, sample, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="bad-inputs")
    client.upload_file(write_parquet(tmp_path / "s3.parquet", sample), "bad-inputs", "data.parquet")
    return s3_server


@pytest.mark.parametrize("uri,without_credentials,fragments", [
    pytest.param("s3://bad-inputs/data.parquet", True,
                 ["s3://bad-inputs/data.parquet: cannot reach the file", "ACCESS_DENIED",
                  "AWS credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"], id="s3-missing-credentials"),
    pytest.param("s3://bad-inputs/nowhere.parquet", False,
                 ["s3://bad-inputs/nowhere.parquet: no such file; expected a Parquet file"], id="s3-missing-object"),
    pytest.param("s3://no-such-bucket/data.parquet", False,
                 ["s3://no-such-bucket/data.parquet: no such file"], id="s3-missing-bucket"),
])
def test_s3_data_that_cannot_be_read(project, capsys, monkeypatch, s3_data, encoder, uri, without_credentials, fragments):
    """Through `sslab eval`, which reads data in this process. Wrong credentials cannot be shown here: moto
    accepts any key pair; only their absence (an unsigned request) is refused."""
    if without_credentials:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to wait for on a test machine
    message = fails(capsys, "eval", encoder, "--train", uri, "--test", "data.parquet", "--s3-endpoint-url", s3_data)
    assert_says(message, *fragments)


# ---- checkpoints (`sslab eval`) ----------------------------------------------------------------------------

class Hostile:
    """Unpickled, it would create a marker file (what a planted checkpoint could do instead)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoint(folder) -> tuple[str, str]:
    import torch

    marker, path = str(folder / "pwned"), str(folder / "hostile.pt")
    torch.save({"format": "sslab.encoder/1", "state_dict": Hostile(marker)}, path)
    return path, marker


def test_a_hostile_pickle_runs_no_code(project):
    """Whatever sslab eval answers, unpickling runs nothing: the marker is never created."""
    path, marker = hostile_checkpoint(project.dir)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "sslab", "eval", path, "--train", "data.parquet", "--test",
                          "data.parquet"], cwd=project.dir, env=environment, capture_output=True, text=True, timeout=120)
    assert not os.path.exists(marker), "unpickling the checkpoint ran its code"
    assert out.returncode != 0, out.stdout


def checkpoint_cases():
    def garbage(folder):
        (folder / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 100)  # fixed: the message must not vary
        return str(folder / "garbage.pt")

    def truncated(folder, encoder):
        data = open(encoder, "rb").read()
        (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
        return str(folder / "truncated.pt")

    def foreign(folder):
        import torch

        torch.save({"weights": torch.zeros(2)}, str(folder / "foreign.pt"))
        return str(folder / "foreign.pt")

    return [
        pytest.param(lambda d, e: str(d / "nowhere.pt"), ["nowhere.pt: checkpoint not found; expected an encoder.pt"],
                     id="checkpoint-missing"),
        pytest.param(lambda d, e: str(d), ["checkpoint not found; expected an encoder.pt"], id="checkpoint-is-a-folder"),
        pytest.param(lambda d, e: garbage(d), ["garbage.pt: not a readable torch checkpoint (truncated, or not written by torch.save"], id="checkpoint-garbage-bytes"),
        pytest.param(truncated, ["truncated.pt: not a readable torch checkpoint (truncated"], id="checkpoint-truncated"),
        pytest.param(lambda d, e: foreign(d), ["foreign.pt: not an sslab encoder checkpoint"], id="checkpoint-foreign"),
        pytest.param(lambda d, e: hostile_checkpoint(d)[0], ["hostile.pt: not a plain tensor checkpoint: it asks to load Python objects",
                     "Refused without running any of it"], id="checkpoint-hostile-pickle"),
    ]


@pytest.mark.parametrize("make,fragments", checkpoint_cases())
def test_bad_checkpoint(project, capsys, encoder, make, fragments):
    message = fails(capsys, "eval", make(project.dir, encoder), "--train", "data.parquet", "--test", "data.parquet")
    assert_says(message, *fragments)
    assert not (project.dir / "pwned").exists()


def test_a_checkpoint_error_as_a_real_process(project):
    path, marker = hostile_checkpoint(project.dir)
    out = sslab_process("eval", path, "--train", "data.parquet", "--test", "data.parquet", cwd=project.dir)
    assert_says(out.stderr, "sslab eval: error: ", "hostile.pt: not a plain tensor checkpoint")
    assert not os.path.exists(marker)


# ---- cluster: addresses (unknown job ids and a missing token: tests/test_cluster_sweep.py, on a real cluster) --

@pytest.mark.parametrize("argv,fragments", [
    pytest.param(["status"], ["cannot reach a Ray dashboard at {address}", "give its address with --address"],
                 id="status-unreachable"),
    pytest.param(["logs", "sslab-x-00000000"], ["cannot reach a Ray dashboard at {address}"], id="logs-unreachable"),
    pytest.param(["stop", "sslab-x-00000000"], ["cannot reach a Ray dashboard at {address}"], id="stop-unreachable"),
    pytest.param(["status", "sslab-x-00000000"], ["cannot reach a Ray dashboard at {address}"],
                 id="status-of-a-job-unreachable"),
])
def test_an_unreachable_cluster(project, capsys, argv, fragments):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    message = fails(capsys, *argv, "--address", address)
    assert_says(message, *(f.format(address=address) for f in fragments))


def test_an_address_that_is_not_a_dashboard_url(project, capsys):
    message = fails(capsys, "status", "--address", "ftp://head:8265")
    assert_says(message, "ftp://head:8265: unsupported scheme 'ftp'; give the cluster's dashboard as --address http://HEAD:8265")


def test_a_sweep_for_an_unreachable_cluster_checks_its_config_first(project, capsys):
    address = f"http://127.0.0.1:{free_port()}"
    message = fails(capsys, "sweep", project({"search": {**SEARCH, "n_trails": 2}}), "--address", address)
    assert_says(message, "search.n_trails: unknown key (did you mean 'n_trials'?)")
    assert address not in message
    assert_no_work(project.dir)


def test_a_cluster_error_as_a_real_process(project):
    address = f"http://127.0.0.1:{free_port()}"
    out = sslab_process("stop", "sslab-x-00000000", "--address", address, cwd=project.dir)
    assert_says(out.stderr, f"sslab stop: error: cannot reach a Ray dashboard at {address}")
