"""One training epoch of a video pretext task: uint8 clips -> per-clip flip -> task -> step.

workloads/training/pretext_loop.py's pretext_train_epoch run over clips (the same step, EpochStats,
full batches, autocast, metrics summed on the device): each batch of clips moves to the device as
uint8, becomes float in [0, 1], is flipped, is normalised frame by frame with the task's
normalisation, and the task builds its own inputs and labels from it:
``step = task(clips, ids)`` with clips float [B, T, 3, H, W] and ids the batch's clip indices (CPU).

The augmentation is one random horizontal flip per clip, the same for all its frames. Nothing else:
the video tasks learn from what changes between frames (order, direction of time, where a patch
went, which colour a pixel had in the reference frame), so an augmentation drawn per frame (a
different crop, flip or colour jitter) would create motion and colour changes that are not in the
video, and the tasks would learn those. A flip of the whole clip keeps every correspondence.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from workloads.pretext.base import PretextTask
from workloads.training.loop import EpochStats
from workloads.training.pretext_loop import pretext_train_epoch


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
    guard=None,  # the run's FiniteGuard (workloads.training.finite), passed through
) -> tuple[EpochStats, dict[str, float]]:
    """Train `task` (a video PretextTask, or a DDP wrapper of one) for one epoch over `indices`.

    clips_uint8: the whole training set, uint8 [N, T, 3, H, W] (CPU); indices: this worker's shard of
    clip indices, in epoch order (workloads.training.loop.epoch_shard). Returns the epoch's stats
    (loss: the mean step loss; images_per_s counts frames, clips x T, the images the encoder saw, so
    it compares with the image workloads' throughput) and the epoch means of the task's step metrics.
    """
    if clips_uint8.dim() != 5 or clips_uint8.dtype != torch.uint8:
        raise ValueError(f"clips_uint8 must be uint8 [N, T, 3, H, W], got {clips_uint8.dtype} {tuple(clips_uint8.shape)}")
    return pretext_train_epoch(task, optimizer, scheduler, clips_uint8, indices, batch_size, device, precision,
                               augment=flip_clips if augment else False, on_step=on_step, guard=guard)
