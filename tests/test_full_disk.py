"""A full disk at storage.path: the run ends FAILED saying so (ENOSPC), and the earlier checkpoints stay readable.

storage.path is a small tmpfs; once the first epoch's checkpoint is on it, the rest of it is filled
with a file, so the next checkpoint cannot be written (a real ENOSPC from the kernel, not a mock).
"""
import errno
import glob
import os
import subprocess
import threading
import time

import pytest
import torch
from conftest import ROOT
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import load_config
from orchestrator.training.run import run_training
from orchestrator.training.state import STATE_FILE, load_state

TINY = ["train.epochs=6", "train.batch_size=128", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.progress=false", "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "name=fulldisk"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 MiB tmpfs (room for a few of the tiny model's checkpoints), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs); this test runs as a normal user")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_when_first_checkpoint(folder, filled: threading.Event, stop: threading.Event) -> None:
    """Once a checkpoint's state file is on the disk (and its copy done), fill the disk to the last byte."""
    while not stop.is_set():
        states = glob.glob(f"{folder}/*/checkpoint_*/{STATE_FILE}")
        if states:
            time.sleep(0.3)  # Ray's copy of a few hundred kB ends well within this; epochs take seconds
            try:
                with open(os.path.join(folder, "filler"), "wb") as handle:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
            filled.set()
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_full_disk_fails_the_run_saying_so_and_keeps_the_earlier_checkpoint(ray_local, workdir, tiny_disk):
    config = load_config(f"{ROOT}/examples/quickstart.yaml", TINY + [f"storage.path={tiny_disk}"])
    filled, stop = threading.Event(), threading.Event()
    filler = threading.Thread(target=fill_when_first_checkpoint, args=(tiny_disk, filled, stop), daemon=True)
    filler.start()
    try:
        with pytest.raises(Exception) as raised:
            run_training(config)
    finally:
        stop.set()
        filler.join(10)
    assert filled.is_set(), "the run ended before its first checkpoint reached the disk"
    assert "ENOSPC" in str(raised.value) and str(tiny_disk) in str(raised.value)

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("fulldisk").experiment_id])
    assert run.info.status == "FAILED"
    error = run.data.tags["sslab.error"]
    assert "the disk is full (ENOSPC" in error and f"storage.path {tiny_disk}" in error, error

    # every checkpoint left on the disk is whole (the half-copied one was removed) and loads without pickle
    folders = sorted(glob.glob(f"{tiny_disk}/fulldisk-*/checkpoint_*/"))
    assert folders, os.listdir(tiny_disk)
    epochs = []
    for folder in folders:
        state = load_state(folder)
        assert state is not None, f"{folder} has no {STATE_FILE}"
        epochs.append(state["epoch"])
        raw = torch.load(os.path.join(folder, STATE_FILE), weights_only=True)
        assert any(isinstance(v, torch.Tensor) for v in raw["learner"].values())
    assert epochs[0] == 0 and epochs[-1] < 5, epochs  # the run stopped before its last epoch


def test_a_full_disk_met_by_ray_trains_controller_is_said_the_same_way():
    """Ray Train's controller also writes to storage.path; its error (seen in a full-suite run) names errno 28."""
    from orchestrator.training.state import full_disk_error

    cause = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    wrapped = RuntimeError("Training failed due to controller error")
    wrapped.__cause__ = cause
    said = full_disk_error(wrapped, "/data/runs")
    assert said.errno == errno.ENOSPC and "storage.path /data/runs: the disk is full (ENOSPC" in str(said)
    assert full_disk_error(RuntimeError("something else"), "/data/runs") is None
