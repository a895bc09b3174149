"""`sslab train`: one pretraining run through Ray Train, recorded as one MLflow run."""
from dataclasses import dataclass

import ray
import ray.train
from ray.train.torch import TorchTrainer

from orchestrator.config.local_paths import with_absolute_paths
from orchestrator.config.schema import SSLabConfig
from orchestrator.memory_bank import ShardedMemoryBank
from orchestrator.ray_runtime import ensure_ray
from orchestrator.services import check_services
from orchestrator.tracking.mlflow_callback import MlflowReportCallback
from orchestrator.tracking.record import Tracker
from orchestrator.training.non_finite import non_finite_error, readable_error
from orchestrator.training import in_process, timeline
from orchestrator.training.shared_data import share
from orchestrator.training.state import full_disk_error
from orchestrator.training.worker import train_worker
from workloads.errors import NonFiniteLossError


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    metrics: dict
    checkpoint_dir: str | None
    pruned: bool = False


def scaling_for(config: SSLabConfig) -> ray.train.ScalingConfig:
    resources = config.resources
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=resources.workers, use_gpu=resources.gpus_per_worker > 0,
                                   resources_per_worker=per_worker)


def open_bank(config: SSLabConfig):
    """The trial's one memory bank (shard actors), shared by all its workers; None without a bank."""
    if config.bank.mode == "none":
        return None
    spec = config.bank
    return ShardedMemoryBank(size=spec.size, dim=config.model.projection_dim, num_shards=spec.shards, mode=spec.mode,
                             momentum=spec.momentum, dtype=spec.dtype, world_size=config.resources.workers,
                             seed=config.seed, snapshot_every=spec.snapshot_every, num_cpus=spec.cpus_per_shard)


def run_training(config: SSLabConfig, kind: str = "train", tags: dict | None = None, run_name: str | None = None,
                 pruning: dict | None = None, data=None) -> TrainResult:
    """Start the MLflow run, train, and leave the run FINISHED, or FAILED/KILLED with the error.

    A nan/inf loss or gradient norm: the run FAILED with the guard's message as sslab.error, and
    NonFiniteLossError raised (its run_id set). A worker's DataError is raised as itself, not as Ray
    Train's WorkerGroupError.

    pruning: {"coordinator": StudyCoordinator handle, "trial": number, "objective": metric} for a
    sweep's trial; a pruned run ends KILLED with tag sslab.pruned=true.

    data: the sweep's decoded data in the object store (shared_data.share_once); without it, this run
    decodes its data once for all its workers (shared_data.share).
    """
    timeline.mark("trial_start", name=run_name or config.name)
    config = with_absolute_paths(config)
    check_services(config)  # before the MLflow run: a dead tracking server could not record a FAILED run
    tracker = Tracker(config.tracking.uri, config.tracking.experiment or config.name, config.tracking.artifact_location)
    run_id = tracker.start_run(config, kind=kind, run_name=run_name or config.name, tags=tags)
    train_name = f"{config.name}-{run_id[:8]}"  # the Ray Train run (the workers' timeline marks name it)
    bank = None
    try:
        ensure_ray()
        if data is None:
            data = share(config)  # decoding while Ray Train starts the workers
        bank = open_bank(config)
        if bank is not None:
            tracker.client.set_tag(run_id, "sslab.bank_nodes", ",".join(sorted(set(map(str, bank.shard_nodes)))))
        loop_config = {"config": config.model_dump(mode="json"), "bank": bank, "pruning": pruning, "data": data}
        timeline.mark("fit_start", run=train_name, name=run_name or config.name)
        if config.runs_in_process():
            metrics, checkpoint_dir = in_process.launch(config, train_worker, loop_config, train_name, run_id)
        else:
            result = ray_train(config, loop_config, train_name, run_id).fit()
            metrics, checkpoint_dir = dict(result.metrics or {}), result.checkpoint and result.checkpoint.path
        timeline.mark("fit_end", run=train_name)
        non_finite = non_finite_error(metrics)  # the workers stopped at a nan/inf step
        if non_finite is not None:
            raise non_finite
    except BaseException as error:
        readable = readable_error(error)
        readable = full_disk_error(readable, config.storage.path) or readable
        if readable is not error:
            readable.__cause__ = error  # error.txt keeps the workers' tracebacks
        if isinstance(readable, NonFiniteLossError):
            readable.run_id = run_id  # for the CLI's message and the sweep (a pruned trial's run)
        tracker.fail(run_id, readable)
        if readable is error:
            raise
        raise readable from error
    finally:
        if bank is not None:
            bank.close()
    pruned = bool(metrics.get("sslab.pruned"))
    if pruned:
        tracker.prune(run_id)
    else:
        tracker.finish(run_id)
    return TrainResult(run_id, tracker.experiment_id, config.tracking.uri, metrics, None if pruned else checkpoint_dir,
                       pruned)


def ray_train(config: SSLabConfig, loop_config: dict, name: str, run_id: str) -> TorchTrainer:
    """The run's Ray Train workers (resources.workers actors), each report written to MLflow by the controller."""
    return TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_for(config),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=config.storage.path,
            callbacks=[MlflowReportCallback(config.tracking.uri, run_id)],
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=in_process.KEEP),
        ),
    )
