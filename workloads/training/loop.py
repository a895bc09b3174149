"""One training epoch in plain PyTorch: batches of decoded images -> two augmented views -> loss -> step.

Distribution-agnostic: the caller passes this worker's shard of the indices (and a DDP-wrapped
module where there are several workers); the orchestrator decides how to run and record it.
"""
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from workloads.evaluate.precision import autocast
from workloads.training.finite import FiniteGuard


@dataclass
class EpochStats:
    loss: float
    lr: float
    images_per_s: float
    seconds: float
    steps: int


def epoch_shard(num_samples: int, epoch: int, seed: int, rank: int, world_size: int, batch_size: int) -> torch.Tensor:
    """This worker's data-set ids for the epoch, in step order: batches of batch_size // world_size.

    One seeded permutation, the same on every worker, cut into global batches of `batch_size` (the
    remainder dropped, the same way everywhere); worker r takes the r-th contiguous chunk of each. So
    every worker has the same number of steps, and the workers' chunks of step s, concatenated in rank
    order, are exactly the global batch one worker would train on at step s.
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {world_size} workers")
    steps = full_batches(num_samples, batch_size)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[: steps * batch_size].view(steps, world_size, -1)[:, rank].reshape(-1)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA ('auto' or 'bf16') and wherever 'bf16' is asked; fp32 elsewhere. The rule
    lives with the frozen-feature code (evaluate.precision), so evaluation resolves it as training does."""
    return autocast(precision, device)


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    """train.channels_last: 'auto' is NHWC on CUDA only (bf16 tensor-core convolutions want it); true/false as given."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def full_batches(images: int, batch_size: int) -> int:
    """Steps in an epoch of full batches (drop_last); a batch larger than the worker's share is an error."""
    if images < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than this worker's {images} training images")
    return images // batch_size


def train_epoch(
    learner: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    images: torch.Tensor,
    indices: torch.Tensor,
    augment: nn.Module,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    channels_last: bool = False,
    guard: FiniteGuard | None = None,
    stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """Full batches only (drop_last), so every step sees batch_size images.

    channels_last: feed the views in NHWC layout (for a model converted with
    .to(memory_format=torch.channels_last)); bf16 convolutions on tensor cores want it.
    on_step(step, loss): after every step, with the step's detached loss tensor (reading its value
    is a device sync: the caller decides how often).
    guard: the run's FiniteGuard (its epoch set by the caller); a nan/inf loss or gradient norm raises
    NonFiniteLossError before that step's optimizer step.
    stop(): asked after every step; True ends the epoch there (a wall-clock budget; with several
    workers the caller makes them agree, as DDP needs the same steps everywhere).
    """
    guard = guard or FiniteGuard()
    learner.train()
    steps = full_batches(len(indices), batch_size)
    total = torch.zeros((), device=device)
    start = time.perf_counter()
    for step in range(steps):
        batch = images[indices[step * batch_size : (step + 1) * batch_size]].to(device, non_blocking=True)
        with torch.no_grad():
            view1, view2 = augment(batch)
            if channels_last:
                view1, view2 = (v.contiguous(memory_format=torch.channels_last) for v in (view1, view2))
        with autocast_for(device, precision):
            loss = learner(view1, view2)
        optimizer.zero_grad(set_to_none=True)
        guard.backward(loss)
        guard.check(loss, optimizer, step)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach()
        if on_step is not None:
            on_step(step, loss.detach())
        if stop is not None and stop():
            steps = step + 1
            break
    seconds = time.perf_counter() - start
    return EpochStats(
        loss=float(total) / steps,
        lr=optimizer.param_groups[0]["lr"],
        images_per_s=steps * batch_size / seconds,
        seconds=seconds,
        steps=steps,
    )


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warmup then cosine decay, stepped once per training step."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
