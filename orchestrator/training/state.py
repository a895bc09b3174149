"""Per-epoch training state in Ray Train checkpoints, so a restarted run resumes where it stopped."""
import errno
import os
import tempfile

import ray.train
import torch

from orchestrator.training import in_process
from workloads.checkpoint import load_plain

STATE_FILE = "train_state.pt"


def report(metrics: dict, folder: str | None = None) -> None:
    """Every report of a run (with `folder` as its checkpoint): to Ray Train, and for an in-process run
    also to its MLflow record, which no Ray Train controller writes there."""
    checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
    in_process.forward(metrics, checkpoint)
    ray.train.report(metrics, checkpoint=checkpoint)


def report_epoch(metrics: dict, state: dict | None) -> None:
    """Every rank reports; rank 0 attaches the state (copied to storage.path)."""
    if state is None:
        report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, STATE_FILE))
        report_checkpoint(metrics, folder, f"the checkpoint of epoch {state.get('epoch')}")


def report_checkpoint(metrics: dict, folder: str, what: str) -> None:
    """report with `folder` as the checkpoint, copied to storage.path (by Ray Train, or by in_process for
    an in-process run). A full disk at storage.path stops the run with an error that says so (ENOSPC);
    the half-copied folder is removed, so the checkpoints kept are the complete ones (a restarted run
    resumes from the last of them)."""
    filesystem, root, run_folder = in_process.storage() if in_process.active() else ray_train_storage()
    before = checkpoint_folders(filesystem, run_folder)
    try:
        if in_process.active():
            in_process.persist(folder)
        report(metrics, folder)
    except OSError as error:
        if not is_full_disk(error):
            raise
        for partial in checkpoint_folders(filesystem, run_folder) - before:
            filesystem.delete_dir(partial)
        raise disk_full(f"s3://{root}" if filesystem.type_name == "s3" else root, f"writing {what}") from None


def ray_train_storage() -> tuple:
    """(filesystem, storage.path on it, this run's folder on it) of a Ray Train worker."""
    storage = ray.train.get_context().get_storage()
    return storage.storage_filesystem, storage.storage_fs_path, storage.experiment_fs_path


def is_full_disk(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or "no space left on device" in str(error).lower()


def disk_full(where: str, doing: str) -> OSError:
    """The one message of a full disk at storage.path, wherever it was met."""
    return OSError(errno.ENOSPC, f"storage.path {where}: the disk is full (ENOSPC, no space left on device) "
                   f"{doing}; the earlier checkpoints are kept. Free space there, or set storage.path to a "
                   f"disk with room, and run again")


def full_disk_error(error: BaseException, storage_path: str) -> OSError | None:
    """A full disk met outside the workers' own report (Ray Train's controller writes its checkpoint
    bookkeeping to storage.path too), as the same clear error; None when `error` is something else."""
    seen, todo = set(), [error]
    while todo:
        found = todo.pop()
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        if "the disk is full (ENOSPC" in str(found):
            return None  # already said by report_checkpoint
        if is_full_disk(found):
            return disk_full(storage_path, "while Ray Train wrote the run's checkpoints")
        todo += [found.__cause__, found.__context__, *getattr(found, "worker_failures", {}).values()]
    return None


def checkpoint_folders(filesystem, run_folder: str) -> set[str]:
    """The run's checkpoint folders on its storage filesystem (local or S3), as paths on it."""
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(run_folder, allow_not_found=True)
    return {info.path for info in filesystem.get_file_info(selector)
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")}


def latest_state() -> dict | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_state(folder)


def load_state(folder: str) -> dict | None:
    """The state in a checkpoint folder, loaded with weights_only=True (model, optimizer, scheduler, key
    encoder and bank states are tensors in plain containers). Anything else in storage.path was put
    there by someone else: UnsafeCheckpointError names the file, and none of its code runs."""
    path = os.path.join(folder, STATE_FILE)
    return load_plain(path, map_location="cpu") if os.path.exists(path) else None
