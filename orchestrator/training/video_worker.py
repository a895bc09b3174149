"""The per-worker function of a video pretext run (workloads/video): clips split by source video, the
task trained through Ray Train like the image tasks (DDP, BatchNorm across workers, per-epoch state,
pruning on the validation split), then the video scores and the task's figure on rank 0."""
import os
import tempfile

import ray.train
import ray.train.torch
import torch
import yaml

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.secrets import redact
from orchestrator.training.learners import backbone_kwargs, batchnorm_for_workers, unwrap
from orchestrator.training.non_finite import report_non_finite
from orchestrator.training.state import latest_state, report, report_checkpoint, report_epoch
from orchestrator.training.worker_parts import build_optimizer, progress_bar, step_hook
from orchestrator.training.video_eval import load_video_splits, random_init_scores, scores, task_metrics
from workloads.checkpoint import save_encoder
from workloads.errors import NonFiniteLossError
from workloads.training.finite import FiniteGuard
from workloads.training.loop import epoch_shard, warmup_cosine
from workloads.video.loop import video_train_epoch
from workloads.video.tasks.registry import build_video_task

NO_HELD_OUT_TASK_METRICS = ("tracking",)  # its pairs come from the training clips' tracks


def video_train_worker(loop_config: dict) -> None:
    config = SSLabConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    torch.manual_seed(config.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    splits = load_video_splits(config)
    train = splits.train
    if len(train) < config.train.batch_size:
        raise ValueError(f"train.batch_size ({config.train.batch_size}) is larger than the training split's "
                         f"{len(train)} clips: lower train.batch_size or give more clips")
    params = config.workload.model_dump(exclude={"kind"})
    task = build_video_task(config.workload.kind, params, config.model.backbone, backbone_kwargs(config))
    task.normalization = splits.normalization
    task.prepare(train)  # tracks, k-means colours: the same on every rank (same data, seeded)
    task = batchnorm_for_workers(task, config, world, device).to(device)
    optimizer = build_optimizer(task.parameters(), config.train)
    steps_per_epoch = len(train) // config.train.batch_size
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.train.epochs, steps_per_epoch * config.train.warmup_epochs)
    first_epoch, first_metrics = 0, {"sslab.data_hash": train.content_hash,
                                     **{f"sslab.{k}": v for k, v in splits.normalization.params().items()}}
    resumed = latest_state()
    if resumed:
        task.load_state_dict(resumed["learner"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        first_epoch = resumed["epoch"] + 1
        first_metrics["train/resumed_from_epoch"] = first_epoch
    elif rank == 0 and config.eval.random_init_baseline:  # the same scores before training, same clips
        first_metrics.update(random_init_scores(config, task.encoder, splits, device))
        if config.workload.kind not in NO_HELD_OUT_TASK_METRICS:
            first_metrics.update(task_metrics(task, splits.test, splits.normalization, config.train.batch_size, device,
                                              "test/random_init", config.seed))
    task = ray.train.torch.prepare_model(task)
    per_worker_batch = config.train.batch_size // world
    progress = progress_bar(config, rank, steps_per_epoch, first_epoch)
    guard = FiniteGuard()  # a nan/inf loss or gradient norm stops the run at that step
    for epoch in range(first_epoch, config.train.epochs):
        indices = epoch_shard(len(train), epoch, config.seed, rank, world, config.train.batch_size)
        tick = step_hook(progress, config.train.log_step_loss_every, epoch * steps_per_epoch, step_losses := [])
        guard.epoch = epoch
        try:
            stats, measured = video_train_epoch(task, optimizer, scheduler, train.clips, indices, per_worker_batch, device,
                                                config.train.precision, on_step=tick, guard=guard)
        except NonFiniteLossError as error:  # every rank, at the same step: the run fails with the message
            if progress:
                progress.close()
            return report_non_finite(error, epoch, world, step_losses)
        metrics = {"epoch": epoch, "train/loss": stats.loss, "train/lr": stats.lr, "train/clips_per_s": stats.images_per_s,
                   **{f"pretext/{name}": value for name, value in measured.items()}}
        if step_losses:
            metrics["sslab.step_losses"] = step_losses
        if epoch == first_epoch:
            metrics.update(first_metrics)
        state = None if rank else {"learner": unwrap(task).state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "epoch": epoch}
        pruning = loop_config.get("pruning")
        if pruning and epoch < config.train.epochs - 1:
            from orchestrator.training.trial_eval import should_prune

            if should_prune(pruning, metrics, epoch, rank, world,
                            lambda objective: scores(config, unwrap(task).encoder, splits, device)):
                report_epoch({**metrics, "sslab.pruned": 1}, state)
                return
        report_epoch(metrics, state)
    if progress:
        progress.close()
    if rank != 0:
        report({"epoch": config.train.epochs})
        return
    report_video_final(config, unwrap(task), splits, device)


def report_video_final(config: SSLabConfig, task, splits, device) -> None:
    """Scores (val: downstream/*, held out: test/*, baselines), encoder.pt, the task's figure, the config."""
    encoder = task.encoder
    metrics = {"epoch": config.train.epochs, **scores(config, encoder, splits, device),
               **scores(config, encoder, splits, device, which="test")}
    if config.workload.kind not in NO_HELD_OUT_TASK_METRICS:
        for prefix, clips in (("val", splits.val), ("test", splits.test)):
            metrics.update(task_metrics(task, clips, splits.normalization, config.train.batch_size, device, prefix,
                                        config.seed))
    with tempfile.TemporaryDirectory() as folder:
        save_encoder(os.path.join(folder, "encoder.pt"), encoder, config.model.backbone, backbone_kwargs(config), {
            "image_size": config.data.image_size, "normalization": splits.normalization.as_dict(),
            "data": {"uri": config.data.uri, "content_hash": splits.train.content_hash,
                     "clip_frames": config.data.clip_frames, "fps": config.data.fps},
            "eval": config.eval.model_dump(), "classes": splits.train.classes, "seed": config.seed,
            "encoder_wrapper": None, "workload": config.workload.kind})
        with task.evaluating():
            shown = splits.val.clips[:4].to(device).float().div(255.0)
            figure = task.figure(splits.normalization.normalize(shown.flatten(0, 1)).view_as(shown))
        figure.savefig(os.path.join(folder, f"{config.workload.kind}.png"), dpi=100, bbox_inches="tight")
        with open(os.path.join(folder, "resolved_config.yaml"), "w") as handle:
            yaml.safe_dump(redact(config.model_dump(mode="json")), handle, sort_keys=False)  # secrets masked
        report_checkpoint(metrics, folder, "the final checkpoint")
