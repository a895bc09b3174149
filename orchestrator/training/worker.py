"""The per-worker function of a Ray Train run: a contrastive or pretext workload, reporting through ray.train."""
import ray.train
import ray.train.torch
import torch

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.video_workload import VIDEO_KINDS
from orchestrator.training.budget import TrainingBudget
from orchestrator.training.learners import (
    backbone_kwargs,
    batchnorm_for_workers,
    build_learner,
    encoder_of,
    key_encoder_for,
    task_figure,
    unwrap,
)
from orchestrator.training.non_finite import report_non_finite
from orchestrator.training.state import latest_state, report, report_epoch
from orchestrator.training import timeline
from orchestrator.training.shared_data import read_splits
from orchestrator.training.worker_parts import build_optimizer, progress_bar, step_hook
from orchestrator.training.trial_eval import (
    data_record,
    eval_precision,
    load_splits,
    make_augment,
    precision_record,
    random_init_knn,
    should_prune,
    val_metrics,
)
from workloads.errors import NonFiniteLossError
from workloads.pretext.registry import encoder_spec
from workloads.training.finite import FiniteGuard
from workloads.training.bank_loop import train_epoch_with_bank
from workloads.training.compiled import compile_or_eager
from workloads.training.loop import epoch_shard, train_epoch, use_channels_last, warmup_cosine
from workloads.training.pretext_loop import pretext_train_epoch

timeline.mark("worker_module_loaded")  # its imports done (a Ray Train worker: before its function starts)


def train_worker(loop_config: dict) -> None:
    config = SSLabConfig.model_validate(loop_config["config"])
    if config.workload.kind in VIDEO_KINDS:
        from orchestrator.training.video_worker import video_train_worker

        return video_train_worker(loop_config)
    memory = timeline.MemoryPeaks() if timeline.enabled() else None
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run = context.get_experiment_name()  # the Ray Train run: which trial a timeline line is from
    timeline.mark("worker_start", run=run, rank=rank, process_started=timeline.process_started())
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    torch.manual_seed(config.seed * 1000 + rank)  # model init is synchronised by DDP; augmentations differ per rank
    device = ray.train.torch.get_device()
    # train / val / test and the normalisation measured on train: the object store's copy where shared
    splits = read_splits(loop_config["data"]) if loop_config.get("data") is not None else load_splits(config)
    train, val = splits.train, splits.val
    timeline.mark("data_ready", run=run, rank=rank)
    per_worker_batch = config.train.batch_size // world

    bank = loop_config.get("bank")
    pretext = config.workload.kind != "contrastive"
    learner, objective = build_learner(config, bank, len(train))
    if pretext:
        learner.normalization = splits.normalization  # the task's inputs: normalised with the data's mean/std
    learner = batchnorm_for_workers(learner, config, world, device)
    optimizer = build_optimizer(learner.parameters(), config.train)
    steps_per_epoch = len(train) // config.train.batch_size  # global batches: the same on every rank
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.train.epochs, steps_per_epoch * config.train.warmup_epochs)
    scoring = eval_precision(config, device)  # eval.precision: how the pruner's and the final scores are computed
    resumed, first_epoch, first_metrics = latest_state(), 0, {
        **data_record(splits), **precision_record(scoring), "sslab.node_id": ray.get_runtime_context().get_node_id()}
    if resumed:
        learner.load_state_dict(resumed["learner"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        first_epoch = resumed["epoch"] + 1
        first_metrics["train/resumed_from_epoch"] = first_epoch
    elif rank == 0 and config.eval.random_init_baseline:
        first_metrics.update(random_init_knn(config, encoder_of(learner).to(device), splits, device, scoring))
    channels_last = use_channels_last(config.train.channels_last, device)
    if channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune the convolutions
        train.images = train.images.to(device)  # uint8 and decoded once: index batches on the GPU
    if config.train.compile:
        learner = compile_or_eager(learner)  # in place: state_dict and checkpoints unchanged
    learner = ray.train.torch.prepare_model(learner)
    key_encoder = None
    if objective is not None:
        key_encoder = key_encoder_for(learner, config)  # from the DDP-synchronised query encoder
        if resumed:
            key_encoder.load_state_dict(resumed["key_encoder"])
            key_encoder.synchronise()  # rank 0's state on every rank
            if rank == 0:
                bank.load_state_dict(resumed["bank"])
            if world > 1:
                torch.distributed.barrier()  # nobody queries the bank before it is restored
    augment = make_augment(config, splits.normalization).to(device)

    progress = progress_bar(config, rank, steps_per_epoch, first_epoch)
    guard = FiniteGuard()  # a nan/inf loss or gradient norm stops the run at that step
    budget = TrainingBudget(config.train.max_minutes, world, device)
    budget.start()
    for epoch in range(first_epoch, config.train.epochs):
        indices = epoch_shard(len(train), epoch, config.seed, rank, world, config.train.batch_size)
        step_losses: list[list[float]] = []
        tick = step_hook(progress, config.train.log_step_loss_every, epoch * steps_per_epoch, step_losses)
        if timeline.enabled() and epoch == first_epoch:
            tick = timeline.first_call(tick, "first_step", run=run, rank=rank)
        timeline.mark("epoch_start", run=run, rank=rank, epoch=epoch)
        task_metrics, guard.epoch = {}, epoch
        try:
            if pretext:
                stats, task_metrics = pretext_train_epoch(learner, optimizer, scheduler, train.images,
                                                          indices.to(train.images.device), per_worker_batch, device,
                                                          config.train.precision, on_step=tick, guard=guard)
            elif objective is None:
                stats = train_epoch(learner, optimizer, scheduler, train.images, indices.to(train.images.device), augment,
                                    per_worker_batch, device, config.train.precision, on_step=tick,
                                    channels_last=channels_last, guard=guard, stop=budget.stop)
            else:
                stats = train_epoch_with_bank(learner, key_encoder, objective, optimizer, scheduler, train.images, indices,
                                              augment, per_worker_batch, device, epoch * steps_per_epoch, rank,
                                              config.train.precision, on_step=tick, guard=guard)
        except NonFiniteLossError as error:  # every rank, at the same step: the run fails with the message
            if progress:
                progress.close()
            return report_non_finite(error, epoch, world, step_losses)
        timeline.mark("epoch_end", run=run, rank=rank, epoch=epoch, **(memory.so_far() if memory else {}))
        metrics = {"epoch": epoch, "train/loss": stats.loss, "train/lr": stats.lr, "train/images_per_s": stats.images_per_s,
                   "train/steps": stats.steps,
                   **{f"pretext/{name}": value for name, value in task_metrics.items()}}
        if step_losses:
            metrics["sslab.step_losses"] = step_losses
        if epoch == first_epoch:
            metrics.update(first_metrics)
        if bank is not None:
            metrics.update(bank.metrics())
        if progress:
            progress.set_description(f"epoch {epoch + 1}/{config.train.epochs} loss {stats.loss:.3f}")
        state = None
        if rank == 0:
            state = {"learner": unwrap(learner).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch}
            if bank is not None:
                state.update(key_encoder=key_encoder.state_dict(), bank=bank.state_dict())
        pruning = loop_config.get("pruning")
        if pruning and epoch < config.train.epochs - 1:
            encoder = encoder_of(learner)
            if should_prune(pruning, metrics, epoch, rank, world,
                            lambda objective: val_metrics(config, encoder, splits, objective, device, scoring)):
                report_epoch({**metrics, "sslab.pruned": 1}, state)
                return
        report_epoch(metrics, state)
        if budget.reached():  # train.max_minutes spent: evaluate what was learned
            break
    if progress:
        progress.close()

    if rank != 0:
        report({"epoch": config.train.epochs})
    else:
        from orchestrator.training.final_report import report_final  # matplotlib, t-SNE: rank 0, at the end

        figures = {f"{config.workload.kind}.png": task_figure(unwrap(learner), val, device)} if pretext else {}
        report_final(config, encoder_of(learner), backbone_kwargs(config), splits, device, figures=figures,
                     encoder_wrapper=encoder_spec(config.workload.kind) if pretext else None)
    if memory is not None:
        timeline.mark("worker_end", run=run, rank=rank, **memory.stop())
