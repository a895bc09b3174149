"""Per-epoch training state in Ray Train checkpoints, so a restarted run resumes where it stopped."""
import os
import tempfile

import ray.train
import torch

STATE_FILE = "train_state.pt"


def report_epoch(metrics: dict, state: dict | None) -> None:
    """Every rank reports; rank 0 attaches the state (written atomically by Ray's checkpoint upload)."""
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def latest_state() -> dict | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, STATE_FILE)
        return torch.load(path, map_location="cpu", weights_only=True) if os.path.exists(path) else None
