"""Frozen-feature extraction: run a backbone over uint8 images and collect its features."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["extract_features", "CIFAR10_MEAN", "CIFAR10_STD"]

# Per-channel mean/std of the CIFAR-10 training images, on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images_uint8: torch.Tensor,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> torch.Tensor:
    """Features ``float32 [N, feature_dim]`` on the CPU for uint8 images ``[N, C, H, W]``.

    Each batch is moved to ``device``, converted to float, scaled to [0, 1] and normalised
    per channel with ``mean``/``std``. The backbone runs in eval mode (BatchNorm uses its
    running statistics) under ``torch.no_grad``; its train/eval mode is restored afterwards.
    The backbone must already be on ``device``.
    """
    if not isinstance(images_uint8, torch.Tensor):
        images_uint8 = torch.as_tensor(images_uint8)
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images_uint8 must have dtype torch.uint8, got {images_uint8.dtype}")
    if images_uint8.dim() != 4:
        raise ValueError(f"images_uint8 must be 4-D [N, C, H, W], got shape {tuple(images_uint8.shape)}")
    channels = images_uint8.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std must have one value per channel ({channels}), got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be > 0 for every channel, got {tuple(std)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")

    device = torch.device(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    was_training = backbone.training
    backbone.eval()
    try:
        out = []
        for start in range(0, images_uint8.shape[0], batch_size):
            x = images_uint8[start : start + batch_size].to(device, non_blocking=True).float().div_(255.0)
            x = (x - mean_t) / std_t
            out.append(backbone(x).float().cpu())
    finally:
        backbone.train(was_training)
    if not out:
        dim = getattr(backbone, "feature_dim", 0)
        return torch.empty(0, dim, dtype=torch.float32)
    return torch.cat(out)
