"""One training epoch of a video pretext task: uint8 clips -> per-clip flip -> task -> step.

The video counterpart of workloads/training/pretext_loop.py's pretext_train_epoch (the same
EpochStats, full batches only, autocast, scheduler stepped per step, metrics summed on the device
without a sync per step, on_step every step with the detached loss): each batch of clips moves to
the device as uint8, becomes float in [0, 1], is flipped, is normalised frame by frame with the
task's normalisation, and the task builds its own inputs and labels from it:
``step = task(clips, ids)`` with clips float [B, T, 3, H, W] and ids the batch's clip indices (CPU).

The augmentation is one random horizontal flip per clip, the same for all its frames. Nothing else:
the video tasks learn from what changes between frames (order, direction of time, where a patch
went, which colour a pixel had in the reference frame), so an augmentation drawn per frame (a
different crop, flip or colour jitter) would create motion and colour changes that are not in the
video, and the tasks would learn those. A flip of the whole clip keeps every correspondence.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from workloads.pretext.base import PretextTask, normalization_of, normalize
from workloads.training.loop import EpochStats, autocast_for, full_batches


def flip_clips(clips: torch.Tensor) -> torch.Tensor:
    """Flip each clip of float [B, T, C, H, W] horizontally with probability 1/2, all its frames alike
    (the coin from torch's global CPU generator, as pretext_loop's crop_flip draws its parameters)."""
    flip = torch.randint(0, 2, (clips.shape[0],)).bool().to(clips.device, non_blocking=True)
    return torch.where(flip.view(-1, 1, 1, 1, 1), clips.flip(-1), clips)


def video_train_epoch(
    task: PretextTask,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    clips_uint8: torch.Tensor,
    indices: torch.Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    augment: bool = True,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[EpochStats, dict[str, float]]:
    """Train `task` (a video PretextTask, or a DDP wrapper of one) for one epoch over `indices`.

    clips_uint8: the whole training set, uint8 [N, T, 3, H, W] (CPU); indices: this worker's shard of
    clip indices, in epoch order (workloads.training.loop.epoch_shard). Returns the epoch's stats
    (loss: the mean step loss; images_per_s counts frames, clips x T, the images the encoder saw, so
    it compares with the image workloads' throughput) and the epoch means of the task's step metrics.
    """
    if clips_uint8.dim() != 5 or clips_uint8.dtype != torch.uint8:
        raise ValueError(f"clips_uint8 must be uint8 [N, T, 3, H, W], got {clips_uint8.dtype} {tuple(clips_uint8.shape)}")
    task.train()
    steps = full_batches(len(indices), batch_size)
    total = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for step in range(steps):
        ids = indices[step * batch_size : (step + 1) * batch_size]
        batch = clips_uint8[ids].to(device, non_blocking=True)
        with torch.no_grad():
            x = batch.float().div_(255.0)
            if augment:
                x = flip_clips(x)
            x = normalize(x, normalization_of(task))  # per channel, so per frame: [..., 3, H, W] broadcasts
        with autocast_for(device, precision):
            out = task(x, ids)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
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
        images_per_s=steps * batch_size * clips_uint8.shape[1] / seconds,
        seconds=seconds,
        steps=steps,
    )
    return stats, {name: float(value) / steps for name, value in sums.items()}
