"""Per-epoch training state in Ray Train checkpoints, so a restarted run resumes where it stopped."""
import errno
import os
import tempfile

import ray.train
import torch

from workloads.checkpoint import load_plain

STATE_FILE = "train_state.pt"


def report_epoch(metrics: dict, state: dict | None) -> None:
    """Every rank reports; rank 0 attaches the state (Ray copies it to storage.path)."""
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, STATE_FILE))
        report_checkpoint(metrics, folder, f"the checkpoint of epoch {state.get('epoch')}")


def report_checkpoint(metrics: dict, folder: str, what: str) -> None:
    """ray.train.report with `folder` as the checkpoint. A full disk at storage.path stops the run with
    an error that says so (ENOSPC); the half-copied folder is removed, so the checkpoints Ray kept are
    the complete ones (a restarted run resumes from the last of them)."""
    storage = ray.train.get_context().get_storage()
    before = checkpoint_folders(storage)
    try:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    except OSError as error:
        if not is_full_disk(error):
            raise
        for partial in checkpoint_folders(storage) - before:
            storage.storage_filesystem.delete_dir(partial)
        where = storage.storage_fs_path
        where = f"s3://{where}" if storage.storage_filesystem.type_name == "s3" else where
        raise disk_full(where, f"writing {what}") from None


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


def checkpoint_folders(storage) -> set[str]:
    """The run's checkpoint folders on its storage filesystem (local or S3), as paths on it."""
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(storage.experiment_fs_path, allow_not_found=True)
    return {info.path for info in storage.storage_filesystem.get_file_info(selector)
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
