"""SimCLR's two-view augmentation, batched on the training device (Chen et al. 2020).

Every sample of a batch gets its own random parameters, and the two views get independent ones:
random resized crop -> horizontal flip -> colour jitter (with probability ``jitter_p``) ->
random grayscale -> optional Gaussian blur -> normalisation with ``mean``/``std`` (a run passes the
per-channel statistics of its training split, ``workloads.data.Normalization``).

The pipeline is composed from kornia's functional ops (``crop_and_resize``, the torchvision-style
``adjust_*`` colour ops, ``rgb_to_grayscale``, ``gaussian_blur2d``), each of which takes a
per-sample parameter tensor, so one call transforms the whole batch. The parameters are drawn as
tensors from torch's global CPU generator (as kornia.augmentation does), then moved to the images'
device: ``torch.manual_seed`` makes the views reproducible, and the same seed gives the same
parameters on CPU and CUDA. ``bench/augment.py`` measures this against
``kornia.augmentation`` and against torchvision v2 applied per sample.

The colour-jitter order is a random permutation drawn once per view (torchvision and kornia do the
same per call), not per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import crop_and_resize

from workloads.augment_fused import apply_colour, colour_affine, crop_flip_resize
from workloads.data.normalization import CIFAR10

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "SimCLRAugment", "normalize", "random_resized_crop_boxes"]

# Runs pass the normalisation measured on their training split (workloads.data.Normalization); the
# defaults are the CIFAR-10 constants defined there, for callers that bring none (tests, benchmarks).
CIFAR10_MEAN = CIFAR10.mean
CIFAR10_STD = CIFAR10.std

# torchvision's RandomResizedCrop defaults: aspect ratio range and the number of rejection tries
# before falling back to the (ratio-clamped) whole image.
_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_TRIES = 10
# SimCLR's blur: sigma drawn uniformly from this range, kernel about 10% of the image side.
_BLUR_SIGMA = (0.1, 2.0)


def _check_probability(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_triple(name: str, value: Sequence[float], positive: bool) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except TypeError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{name} must hold 3 numbers (one per RGB channel), got {value!r}")
    if positive and not all(v > 0 for v in values):
        raise ValueError(f"{name} must hold 3 numbers > 0, got {value!r}")
    return values  # type: ignore[return-value]


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.to(torch.float32)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> torch.Tensor:
    """uint8 [B,3,H,W] (or float in [0, 1]) -> float32 ``(x - mean) / std``, no augmentation."""
    mean = _check_triple("mean", mean, positive=False)
    std = _check_triple("std", std, positive=True)
    x = _to_unit_float(images)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1).to(x.device, non_blocking=True)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1).to(x.device, non_blocking=True)
    return (x - m) / s


def random_resized_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = _CROP_RATIO,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop parameters, one box per sample, drawn from the CPU generator.

    Returns boxes [batch, 4, 2] of (x, y) pixel corners (top-left, top-right, bottom-right,
    bottom-left, inclusive) as kornia's ``crop_and_resize`` takes them.
    """
    area = torch.empty(batch, _CROP_TRIES).uniform_(*scale) * (height * width)
    log_ratio = torch.empty(batch, _CROP_TRIES).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first try that fits
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # No try fits: the whole image, its aspect ratio clamped into `ratio` (torchvision's fallback).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fb_w, fb_h = round(height * ratio[1]), height
    else:
        fb_w, fb_h = width, height
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w, torch.full_like(w, fb_w))
    h = torch.where(any_fit, h, torch.full_like(h, fb_h))
    top = torch.floor(torch.rand(batch) * (height - h + 1))
    left = torch.floor(torch.rand(batch) * (width - w + 1))
    x1, y1, x2, y2 = left, top, left + w - 1, top + h - 1
    return torch.stack(
        [torch.stack(c, dim=-1) for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], dim=1
    )


class SimCLRAugment(torch.nn.Module):
    """Two independently augmented views of a batch, each sample with its own random parameters.

    ``forward(images)`` takes uint8 [B,3,H,W] (or float in [0, 1]) on any device and returns
    ``(view1, view2)``, float32 normalised [B,3,image_size,image_size] on the same device.
    ``jitter`` is (brightness, contrast, saturation, hue) strength as in torchvision's ColorJitter:
    factors uniform in [max(0, 1 - s), 1 + s] and the hue shift uniform in [-hue, hue].
    """

    def __init__(
        self,
        image_size: int = 32,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        fused: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(fused, bool):
            raise ValueError(f"fused must be true or false, got {fused!r}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        try:
            lo, hi = (float(v) for v in crop_scale)
        except (TypeError, ValueError):
            raise ValueError(
                f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale!r}"
            ) from None
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale!r}"
            )
        try:
            b, c, s, h = (float(v) for v in jitter)
        except (TypeError, ValueError):
            raise ValueError(
                "jitter must be (brightness, contrast, saturation, hue) with the first three >= 0 "
                f"and hue in [0, 0.5], got {jitter!r}"
            ) from None
        if min(b, c, s) < 0 or not 0.0 <= h <= 0.5:
            raise ValueError(
                "jitter must be (brightness, contrast, saturation, hue) with the first three >= 0 "
                f"and hue in [0, 0.5], got {jitter!r}"
            )
        self.image_size = image_size
        self.crop_scale = (lo, hi)
        self.flip_p = _check_probability("flip_p", flip_p)
        self.jitter = (b, c, s, h)
        self.jitter_p = _check_probability("jitter_p", jitter_p)
        self.grayscale_p = _check_probability("grayscale_p", grayscale_p)
        self.blur_p = _check_probability("blur_p", blur_p)
        self.mean = _check_triple("mean", mean, positive=False)
        self.std = _check_triple("std", std, positive=True)
        self.fused = fused
        # On the module's device once it is moved there: no host-to-device copy per step.
        self.register_buffer("mean_", torch.tensor(self.mean), persistent=False)
        self.register_buffer("std_", torch.tensor(self.std), persistent=False)
        # SimCLR: kernel 10% of the image side, odd, at least 3.
        self.blur_kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, crop_scale={self.crop_scale}, flip_p={self.flip_p}, "
            f"jitter={self.jitter}, jitter_p={self.jitter_p}, grayscale_p={self.grayscale_p}, "
            f"blur_p={self.blur_p}, mean={self.mean}, std={self.std}, fused={self.fused}"
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _to_unit_float(images)
        if self.fused and len(x):  # the colour of both views in one pass
            return self.fused_views(x).chunk(2)
        return self.view(x), self.view(x)

    def draw(self, batch: int, height: int, width: int, device: torch.device):
        """One view's random parameters: every one from the CPU generator, moved to the device in one copy.

        Returns boxes [B,4,2], the gates flip/jitter/gray/blur [B,1,1,1] bool, the jitter factors [B,4]
        (the hue shift in turns), the blur sigma [B,2] (on the CPU) and the jitter order.
        """
        boxes = random_resized_crop_boxes(batch, height, width, self.crop_scale)
        u = torch.rand(batch, 4)  # gates: flip, jitter, grayscale, blur
        b, c, s, h = self.jitter
        factors = torch.stack(
            [
                torch.empty(batch).uniform_(max(0.0, 1.0 - b), 1.0 + b),
                torch.empty(batch).uniform_(max(0.0, 1.0 - c), 1.0 + c),
                torch.empty(batch).uniform_(max(0.0, 1.0 - s), 1.0 + s),
                torch.empty(batch).uniform_(-h, h),
            ],
            dim=1,
        )
        sigma = torch.empty(batch, 1).uniform_(*_BLUR_SIGMA).expand(batch, 2)
        order = [k for k in torch.randperm(4).tolist() if self.jitter[k] > 0]
        gates = u < torch.tensor([self.flip_p, self.jitter_p, self.grayscale_p, self.blur_p])
        params = torch.cat([boxes.reshape(batch, 8), gates.to(torch.float32), factors], dim=1)
        if device.type == "cuda":  # pinned: the copy is queued without waiting for the stream
            params = params.pin_memory()
        params = params.to(device, non_blocking=True)
        gates = tuple(params[:, 8 + k].bool().view(batch, 1, 1, 1) for k in range(4))
        # sigma stays on the CPU: kornia checks it there without waiting for the device.
        return params[:, 0:8].view(batch, 4, 2), gates, params[:, 12:16], sigma, order

    def fused_views(self, x: torch.Tensor) -> torch.Tensor:
        """Both views, [2B,3,size,size]: crop+flip+resize in one resampling, colour in one affine map
        (workloads.augment_fused says what differs from the op-by-op path)."""
        batch, _, height, width = x.shape
        crops, affines = [], []
        for _ in range(2):  # each view draws its own parameters and jitter order, as in view()
            boxes, (flip, jit, gray, blur), factors, sigma, order = self.draw(batch, height, width, x.device)
            crop = crop_flip_resize(x, boxes, flip.view(-1), self.image_size)
            if self.blur_p > 0:  # blur and the colour map commute (both linear, blur keeps constants)
                k = self.blur_kernel
                crop = torch.where(blur, gaussian_blur2d(crop, (k, k), sigma, border_type="reflect"), crop)
            crops.append(crop)
            affines.append(colour_affine(crop, factors, order if self.jitter_p > 0 else [], jit.view(-1),
                                         gray.view(-1)))
        a, b = (torch.cat([affine[k] for affine in affines]) for k in range(2))
        return apply_colour(torch.cat(crops), a, b, *self.normalisation(x.device))

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One augmented, normalised view of float images in [0, 1], op by op."""
        batch, _, height, width = x.shape
        device = x.device
        size = self.image_size
        if batch == 0:
            return x.new_empty(0, 3, size, size)
        boxes, (flip, jit, gray, blur), factors, sigma, order = self.draw(batch, height, width, device)

        out = crop_and_resize(x, boxes, (size, size), mode="bilinear", align_corners=True)
        if self.flip_p > 0:
            out = torch.where(flip, out.flip(-1), out)
        if self.jitter_p > 0 and any(v > 0 for v in self.jitter):
            y = out
            for k in order:
                if k == 0:
                    y = adjust_brightness_accumulative(y, factors[:, 0])
                elif k == 1:
                    y = adjust_contrast_with_mean_subtraction(y, factors[:, 1])
                elif k == 2:
                    y = adjust_saturation_with_gray_subtraction(y, factors[:, 2])
                else:  # kornia takes the hue shift in radians, torchvision in turns
                    y = adjust_hue(y, factors[:, 3] * (2 * math.pi))
            out = torch.where(jit, y.clamp(0.0, 1.0), out)
        if self.grayscale_p > 0:
            out = torch.where(gray, rgb_to_grayscale(out).expand_as(out), out)
        if self.blur_p > 0:
            k = self.blur_kernel
            out = torch.where(blur, gaussian_blur2d(out, (k, k), sigma, border_type="reflect"), out)
        m, sd = self.normalisation(device)
        return (out - m.view(1, 3, 1, 1)) / sd.view(1, 3, 1, 1)

    def normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std [3] on `device`: the buffers, copied only where the images are elsewhere."""
        if self.mean_.device != device:
            return self.mean_.to(device), self.std_.to(device)
        return self.mean_, self.std_
