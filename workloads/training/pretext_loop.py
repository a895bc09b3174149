"""One pretext-task training epoch in plain PyTorch: uint8 batches -> light augmentation -> task -> step.

The pretext counterpart of workloads/train_loop.py's train_epoch (same EpochStats, full batches
only, autocast, scheduler stepped per step, on_step every step with the detached loss): each
batch moves to the device as uint8, becomes float in [0, 1], gets the standard CIFAR augmentation
(random crop with 4-px reflect padding, horizontal flip; per-sample parameters from torch's global
CPU generator), is normalised, and the task builds its own inputs and labels from it:
``step = task(images, ids)`` with ids the batch's data-set indices, left on the CPU (tasks that
use them move them; a check of their range there costs no device sync).

The augmentation is deliberately light: the pretext task itself makes the hard inputs (rotations,
patches, distortions), and heavy crops would destroy what some tasks predict (patch positions).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from workloads.pretext.base import PretextTask, normalization_of, normalize
from workloads.training.finite import FiniteGuard
from workloads.training.loop import EpochStats, autocast_for, full_batches

PAD = 4  # the standard CIFAR crop padding, pixels


def crop_flip(images: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Per-sample random crop of the reflect-padded images back to their size, and a random
    horizontal flip, in one gather. images: float [B, C, H, W]; needs pad < H, W."""
    batch, channels, height, width = images.shape
    # Offsets in [0, 2 * pad] and flips from the CPU generator, then one copy to the device.
    params = torch.cat([torch.randint(0, 2 * pad + 1, (batch, 2)), torch.randint(0, 2, (batch, 1))], dim=1)
    params = params.to(images.device, non_blocking=True)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    rows = params[:, 0:1] + torch.arange(height, device=images.device)  # [B, H]
    steps = torch.arange(width, device=images.device)
    cols = params[:, 1:2] + torch.where(params[:, 2:3].bool(), width - 1 - steps, steps)  # [B, W], reversed = flip
    b = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    c = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[b, c, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]


def pretext_train_epoch(
    task: PretextTask,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    images_uint8: torch.Tensor,
    indices: torch.Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    augment: bool | Callable[[torch.Tensor], torch.Tensor] = True,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    guard: FiniteGuard | None = None,
) -> tuple[EpochStats, dict[str, float]]:
    """Train `task` (a PretextTask, or a DDP wrapper of one) for one epoch over `indices`.

    images_uint8: the whole training set, uint8 [N, 3, H, W], or clips [N, T, 3, H, W] for a video task
    (CPU); indices: this worker's shard of data-set indices, in epoch order. augment: True for
    crop_flip, False for none, or a function of the float batch in [0, 1] (the video loop's flip per
    clip). Returns the epoch's stats (loss: the mean step loss; images_per_s counts frames for clips)
    and the epoch means of the task's step metrics. guard: as train_epoch's (a nan/inf step raises
    NonFiniteLossError before its optimizer step).
    """
    guard = guard or FiniteGuard()
    task.train()
    steps = full_batches(len(indices), batch_size)
    total = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for step in range(steps):
        ids = indices[step * batch_size : (step + 1) * batch_size]
        batch = images_uint8[ids].to(device, non_blocking=True)
        with torch.no_grad():
            x = batch.float().div_(255.0)
            if augment:
                x = crop_flip(x) if augment is True else augment(x)
            x = normalize(x, normalization_of(task))  # the data's mean/std, per channel (per frame of a clip)
        with autocast_for(device, precision):
            out = task(x, ids)
        optimizer.zero_grad(set_to_none=True)
        guard.backward(out.loss)
        guard.check(out.loss, optimizer, step)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += out.loss.detach()
        for name, value in out.metrics.items():  # summed on the device: no sync per step
            value = value.detach().float()
            sums[name] = sums[name] + value if name in sums else value
        if on_step is not None:
            on_step(step, out.loss.detach())
    seconds = time.perf_counter() - start
    stats = EpochStats(
        loss=float(total) / steps,
        lr=optimizer.param_groups[0]["lr"],
        images_per_s=steps * batch_size * (images_uint8.shape[1] if images_uint8.dim() == 5 else 1) / seconds,
        seconds=seconds,
        steps=steps,
    )
    return stats, {name: float(value) / steps for name, value in sums.items()}
