"""Frozen-feature extraction: run a backbone over uint8 images and collect its features."""

from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import Normalization, using_normalization
from .precision import autocast, resolve_precision

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images_uint8: torch.Tensor,
    normalization: Normalization,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
) -> torch.Tensor:
    """Features ``float32 [N, feature_dim]`` on the CPU for uint8 images ``[N, C, H, W]``.

    Each batch is moved to ``device``, converted to float, scaled to [0, 1] and normalised
    per channel with ``normalization`` (the training split's statistics: what the encoder was
    trained on), which is also the active normalisation while the backbone runs (encoders that
    convert their input, e.g. to Lab, read it). The backbone runs in eval mode (BatchNorm uses its
    running statistics) under ``torch.no_grad``; its train/eval mode is restored afterwards.
    The backbone must already be on ``device``.

    precision ('fp32', 'bf16', or 'auto': bf16 on CUDA) runs the backbone under that autocast, and
    channels_last feeds it NHWC input: how a run trained (workloads.evaluate.precision), for its
    speed. The backbone is never changed (a run that trains channels_last has converted it already);
    the features come back float32 either way. The defaults are exact fp32 NCHW.
    """
    if not isinstance(images_uint8, torch.Tensor):
        images_uint8 = torch.as_tensor(images_uint8)
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images_uint8 must have dtype torch.uint8, got {images_uint8.dtype}")
    if images_uint8.dim() != 4:
        raise ValueError(f"images_uint8 must be 4-D [N, C, H, W], got shape {tuple(images_uint8.shape)}")
    if not isinstance(normalization, Normalization):
        raise ValueError(f"normalization must be a workloads.data.Normalization, got {type(normalization).__name__}")
    channels = images_uint8.shape[1]
    if len(normalization.mean) != channels:
        raise ValueError(f"normalization has {len(normalization.mean)} channels, the images {channels}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    resolve_precision(precision, device)  # a bad value fails before any work

    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    try:
        out = []
        with using_normalization(normalization):
            for start in range(0, images_uint8.shape[0], batch_size):
                x = images_uint8[start : start + batch_size].to(device, non_blocking=True).float().div_(255.0)
                x = normalization.normalize(x)  # in fp32: autocast only lowers the backbone's matmuls/convolutions
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(precision, device):
                    out.append(backbone(x).float().cpu())
    finally:
        backbone.train(was_training)
    if not out:
        dim = getattr(backbone, "feature_dim", 0)
        return torch.empty(0, dim, dtype=torch.float32)
    return torch.cat(out)
