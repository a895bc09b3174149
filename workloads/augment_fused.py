"""SimCLR's view in two passes over the pixels: crop+flip+resize as one resampling, colour as one affine map.

``SimCLRAugment(fused=True)`` calls this instead of its op-by-op kornia pipeline, with the same random
parameters (drawn the same way, from torch's CPU generator):

- crop, resize and flip: one ``F.affine_grid`` + ``F.grid_sample`` per batch (bilinear,
  ``align_corners=True``, as kornia's ``crop_and_resize``); the flip is the sign of the x scale.
- colour: brightness, contrast, saturation, hue, grayscale and normalisation are all affine maps of
  a pixel's RGB vector, so they compose per sample into one 3x3 matrix and offset (in the view's
  random order), applied in one batched matmul, then one clamp to [0, 1] and the normalisation.

What differs from the op-by-op path (and torchvision): the hue shift is a rotation about the gray
axis (the linear "hue-rotate" of SVG/CSS) rather than a shift in HSV, and values are clamped once,
after the jitter and grayscale, rather than after each op. Crop, flip, brightness and grayscale
alone match the op-by-op path to float rounding.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# Rec. 601 luma (torchvision's and kornia's rgb_to_grayscale): contrast's mean gray, saturation, grayscale.
LUMA = (0.299, 0.587, 0.114)
# The hue-rotate matrix (SVG feColorMatrix): I·cos-weighted terms around Rec. 709 luma; gray stays gray.
_HUE_BASE = ((0.213, 0.715, 0.072),) * 3
_HUE_COS = ((0.787, -0.715, -0.072), (-0.213, 0.285, -0.072), (-0.213, -0.715, 0.928))
_HUE_SIN = ((-0.213, -0.715, 0.928), (0.143, 0.140, -0.283), (-0.787, 0.715, 0.072))


def crop_flip_resize(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """x [B,3,H,W] float; boxes [B,4,2] inclusive pixel corners (x, y); flip [B] bool -> [B,3,size,size]."""
    batch, _, height, width = x.shape
    x1, y1 = boxes[:, 0, 0], boxes[:, 0, 1]
    x2, y2 = boxes[:, 2, 0], boxes[:, 2, 1]
    # align_corners=True: normalised -1..1 spans pixel centres 0..W-1; the output's -1..1 spans the box.
    sx, sy = (x2 - x1) / max(width - 1, 1), (y2 - y1) / max(height - 1, 1)
    tx, ty = (x1 + x2) / max(width - 1, 1) - 1, (y1 + y2) / max(height - 1, 1) - 1
    sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


@functools.lru_cache(maxsize=8)
def constants(device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The colour maps' constant tensors, made once per device: a tensor built from Python numbers is a
    host-to-device copy, which on CUDA waits for the stream, so none is built per step."""
    def make(values):
        return torch.tensor(values, dtype=dtype).to(device)

    return {"luma": make(LUMA), "eye": make([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), "neutral": make([1.0, 1.0, 1.0, 0.0]),
            "hue_base": make(_HUE_BASE), "hue_cos": make(_HUE_COS), "hue_sin": make(_HUE_SIN)}


def _hue_matrix(turns: torch.Tensor, const: dict[str, torch.Tensor]) -> torch.Tensor:
    angle = turns * (2 * math.pi)
    return const["hue_base"] + angle.cos().view(-1, 1, 1) * const["hue_cos"] + angle.sin().view(-1, 1, 1) * const["hue_sin"]


def colour_affine(crops: torch.Tensor, factors: torch.Tensor, order: list[int], jitter_on: torch.Tensor,
                  gray_on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (A [B,3,3], b [B,3]) such that jitter-then-grayscale of a pixel p is A p + b (unclamped).

    factors [B,4]: brightness, contrast, saturation factors and the hue shift in turns; order: the
    jitter ops' order (0..3); jitter_on, gray_on [B] bool gates.
    """
    batch, const = len(crops), constants(crops.device, crops.dtype)
    factors = torch.where(jitter_on.view(-1, 1), factors, const["neutral"])  # gate off: every op is the identity
    eye, luma = const["eye"].expand(batch, 3, 3), const["luma"]
    to_gray = luma.expand(3, 3)  # every output channel = luma · p
    mean = crops.mean(dim=(2, 3))  # contrast blends towards the mean gray of the image as it is then
    a, b = eye, crops.new_zeros(batch, 3)
    for k in order:
        f = factors[:, k].view(-1, 1, 1)
        if k == 0:  # brightness: f p
            m = f * eye
        elif k == 1:  # contrast: c p + (1 - c) gray_mean
            gray_mean = ((a @ mean.unsqueeze(-1)).squeeze(-1) + b) @ luma
            a, b = f * a, f.view(-1, 1) * b + ((1 - f.view(-1)) * gray_mean).unsqueeze(-1)
            continue
        elif k == 2:  # saturation: s p + (1 - s) gray(p)
            m = f * eye + (1 - f) * to_gray
        else:
            m = _hue_matrix(factors[:, 3], const)
        a, b = m @ a, (m @ b.unsqueeze(-1)).squeeze(-1)
    gray = gray_on.view(-1, 1, 1)
    return torch.where(gray, to_gray @ a, a), torch.where(gray.view(-1, 1), (b @ luma).unsqueeze(-1).expand(-1, 3), b)


def apply_colour(crops: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor) -> torch.Tensor:
    """clamp(A p + b, 0, 1), normalised with mean/std [3] (on the crops' device): one matmul, one clamp, one
    multiply-add."""
    batch, channels, height, width = crops.shape
    out = torch.baddbmm(b.unsqueeze(-1), a, crops.reshape(batch, channels, height * width)).clamp_(0.0, 1.0)
    scale = 1.0 / std.view(1, 3, 1)
    return torch.addcmul(-mean.view(1, 3, 1) * scale, out, scale).view(batch, channels, height, width)
