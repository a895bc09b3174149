"""A run's one worker in a pooled Ray task: Ray Train's local mode (ScalingConfig(num_workers=0)).

Ray Train starts a controller actor, a placement group and a worker actor for every run, each a new
process that imports torch and Ray Train again (most of a tiny run's overhead, measured in
docs/benchmarks.md). A Ray task's process is pooled instead: the next run on that node reuses it, its
imports done. The task asks for the worker's CPUs and GPUs, so Ray places and counts it as it would
the worker.

A GPU run gets a new process each time (see ON_GPU).

Local mode runs no Ray Train callbacks and keeps no checkpoints: each report is given here to the run's
MlflowReportCallback (state.report calls `forward`), and a checkpoint folder is copied to storage.path
as Ray Train lays it out (<run>/checkpoint_<time>/, the last two kept; `persist`). Nothing restarts an
in-process run (resources.in_process needs train.max_failures 0).
"""
import datetime

import pyarrow.fs
import ray
import ray.train
from ray.train.torch import TorchTrainer

from orchestrator.ray_runtime import cancel_unended

KEEP = 2  # checkpoints kept per run, here and by Ray Train's CheckpointConfig (run.py)
_run: dict | None = None  # the run trained in this process now: its callback and storage


def active() -> bool:
    return _run is not None


def forward(metrics: dict, checkpoint: ray.train.Checkpoint | None) -> None:
    """A report of the in-process run, into its MLflow run (before the checkpoint's folder goes away)."""
    if _run is not None:
        _run["callback"].after_report(None, [metrics], checkpoint)


def storage() -> tuple[pyarrow.fs.FileSystem, str, str]:
    """The filesystem of storage.path, storage.path on it, and this run's folder on it."""
    return _run["filesystem"], _run["root"], _run["folder"]


def persist(folder: str) -> None:
    """Copy a checkpoint folder to storage.path (local or S3) and drop the run's older ones beyond KEEP.
    A failed copy (a full disk) raises; state.report_checkpoint removes the partial copy."""
    filesystem, _, run_folder = storage()
    target = f"{run_folder}/checkpoint_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S.%f}"
    filesystem.create_dir(target)
    pyarrow.fs.copy_files(folder, target, destination_filesystem=filesystem)
    _run["checkpoint"] = target
    selector = pyarrow.fs.FileSelector(run_folder)
    kept = sorted(info.path for info in filesystem.get_file_info(selector)
                  if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"))
    for old in kept[:-KEEP]:
        filesystem.delete_dir(old)


def fit_task(*args) -> tuple[dict, str | None]:
    # Ray ships a task's function with a copy of its globals: `fit`, from the imported module, sets this
    # module's own _run, which the worker's reports read
    from orchestrator.training.in_process import fit

    return fit(*args)


ON_CPU = ray.remote(max_retries=0)(fit_task)
# A GPU run's process is not reused: idle, it would keep its CUDA context and cached memory on the GPU
# that the next run is given (Ray's own default for GPU tasks, which `.options(num_gpus=...)` skips)
ON_GPU = ray.remote(max_retries=0, max_calls=1)(fit_task)


def fit(train_fn, loop_config: dict, name: str, tracking_uri: str, run_id: str,
        storage_path: str) -> tuple[dict, str | None]:
    """Train in this process: the last report's metrics (as Ray Train's Result.metrics) and the last
    checkpoint's path in storage.path."""
    from orchestrator.tracking.mlflow_callback import MlflowReportCallback  # MLflow: not in Ray Train's workers

    global _run
    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    root = root.rstrip("/")
    _run = {"callback": MlflowReportCallback(tracking_uri, run_id), "filesystem": filesystem, "root": root,
            "folder": f"{root}/{name}", "checkpoint": None}
    try:
        trainer = TorchTrainer(train_fn, train_loop_config=loop_config, scaling_config=ray.train.ScalingConfig(num_workers=0),
                               run_config=ray.train.RunConfig(name=name))
        metrics = dict(trainer.fit().metrics or {})
        checkpoint = _run["checkpoint"]
        return metrics, checkpoint if filesystem.type_name == "local" or checkpoint is None else f"s3://{checkpoint}"
    finally:
        _run = None


def launch(config, train_fn, loop_config: dict, name: str, run_id: str) -> tuple[dict, str | None]:
    """fit_task (ON_CPU or ON_GPU) with the worker's resources, waited for; stopped with the caller (Ctrl-C, a
    cancelled trial: the task is cancelled with it)."""
    resources = config.resources
    task = ON_GPU if resources.gpus_per_worker else ON_CPU
    ref = task.options(name=name, num_cpus=resources.cpus_per_worker, num_gpus=resources.gpus_per_worker).remote(
        train_fn, loop_config, name, config.tracking.uri, run_id, config.storage.path)
    return wait_for(ref)


def wait_for(ref: ray.ObjectRef):
    """ray.get(ref); the task cancelled if the caller stops first (Ctrl-C, a cancelled trial)."""
    try:
        return ray.get(ref)
    except BaseException:
        cancel_unended([ref])  # a task that ended with its error is left alone
        raise
