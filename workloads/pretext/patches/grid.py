"""Patch geometry for the patch pretext tasks, with the measures against shortcuts of Doersch et al.

Doersch, Gupta & Efros, "Unsupervised Visual Representation Learning by Context Prediction", ICCV
2015 (relative position); Noroozi & Favaro, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles", ECCV 2016 (jigsaw). Both cut patches from a 3x3 grid.

Geometry. A 32-px CIFAR image is too small to cut nine useful patches from, so each image is first
resized (bilinear) to ``grid_size`` px square (96) and divided into a 3x3 grid of cells of
``cell = grid_size // 3`` px. Positions are numbered row-major, 0 (top-left) .. 8 (bottom-right),
4 being the centre. A patch is a square of ``patch_size = cell - gap`` px centred in its cell
(24 px of a 32-px cell by default), then moved by an integer jitter drawn uniformly in
[-jitter, jitter] per axis, per patch and per sample. ``jitter <= gap // 2`` keeps every patch inside
its own cell, so patches never overlap and never leave the image; neighbours stay at least
``gap - 2 * jitter`` px apart. Patches are exact integer crops, cut for the whole batch by one gather.

Measures against shortcuts (each switchable; the paper's reason in brackets):
- ``gap`` (0 = off): [lines and textures continuing across the border would give the answer away
  without any understanding of the content];
- ``jitter`` (0 = off): [the exact alignment of a line across the gap would still do so];
- ``downsample_p``: a patch is downsampled to 1/4..1/2 of its side (per patch) and upsampled back
  [robustness to pixelation; fine-texture statistics stop telling patches apart]. CIFAR patches
  already hold only ~8 source pixels a side, so it matters mostly for larger images;
- ``color_drop_p``: 2 of the 3 colour channels, chosen per patch, are replaced by Gaussian noise
  with 1/100 of the kept channel's standard deviation [chromatic aberration shifts the colour
  channels against each other towards the lens border, which tells the network where in the frame a
  patch lies; with one channel left there is nothing to shift];
- ``grayscale_p`` (Noroozi & Favaro): a sample's patches are all turned grey [the same shortcut,
  while still training on colour images the rest of the time];
- ``normalize_patches`` (Noroozi & Favaro): each patch is set to zero mean and unit standard
  deviation on its own [neighbouring patches cannot be matched by their brightness or contrast].

Random parameters are drawn from torch's global CPU generator (as workloads/augment.py does) and
moved to the images' device, so ``torch.manual_seed`` reproduces them on any device; only the colour
drop's noise is drawn on the device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.pretext.base import normalize, to_unit

GRID = 3
CENTRE = 4
COLOR_NOISE = 0.01  # Doersch et al.: dropped channels become noise of ~1/100 the kept channel's std
POSITION_NAMES = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        valid = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")
    return value


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def resize_to_grid(images: torch.Tensor, grid_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, grid_size, grid_size], bilinear (antialiased only when shrinking)."""
    height, width = images.shape[-2:]
    if (height, width) == (grid_size, grid_size):
        return images
    shrink = height > grid_size or width > grid_size
    return F.interpolate(images, size=(grid_size, grid_size), mode="bilinear", align_corners=False, antialias=shrink)


def crop_patches(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """Exact crops: images [B, C, G, G'], corners long [B, K] -> patches [B, K, C, size, size] (one gather)."""
    batch, channels, _, width = images.shape
    k = tops.shape[1]
    span = torch.arange(size, device=images.device)
    rows = tops.to(images.device)[..., None] + span  # [B, K, size]
    cols = lefts.to(images.device)[..., None] + span
    flat = (rows[..., :, None] * width + cols[..., None, :]).view(batch, 1, k * size * size)
    out = images.flatten(2).gather(2, flat.expand(batch, channels, -1))
    return out.view(batch, channels, k, size, size).transpose(1, 2).contiguous()


def downsample_upsample(patches: torch.Tensor, chosen: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """patches [N, C, S, S]; chosen bool [N] and sizes long [N] on the CPU: resample chosen ones via sizes."""
    side = patches.shape[-1]
    out = patches
    for small in sizes[chosen].unique().tolist():  # a few distinct sizes: one batched resample each
        idx = torch.nonzero(chosen & (sizes == small)).squeeze(1).to(patches.device)
        low = F.interpolate(patches[idx], size=(small, small), mode="bilinear", align_corners=False, antialias=True)
        back = F.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)
        out = out.index_copy(0, idx, back.to(out.dtype))
    return out


def drop_colors(patches: torch.Tensor, dropped: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """patches [N, 3, S, S] (normalised); dropped bool [N]; keep long [N] in 0..2, the channel kept.

    In each dropped patch the two other channels become Gaussian noise around 0 (the data's mean
    colour) with COLOR_NOISE times the kept channel's standard deviation.
    """
    n = patches.shape[0]
    device = patches.device
    keep = keep.to(device)
    mask = (torch.arange(3, device=device) != keep[:, None]) & dropped.to(device)[:, None]  # [N, 3]
    kept = patches[torch.arange(n, device=device), keep]  # [N, S, S]
    std = kept.flatten(1).std(dim=1).view(n, 1, 1, 1)
    noise = torch.randn_like(patches) * (COLOR_NOISE * std)
    return torch.where(mask[:, :, None, None], noise, patches)


class PatchGrid:
    """Cuts patches at given 3x3-grid positions and applies the switched-on measures.

    ``grid(images, positions)``: images normalised [B, 3, H, W]; positions long [B, K] in 0..8 ->
    (patches [B, K, 3, patch_size, patch_size] normalised, corners long [B, K, 2] (top, left) in the
    grid_size image, on the CPU).

    grid_size: side the images are resized to, a multiple of 3 >= 24. gap: integer in
    [0, cell - 8] (patches of >= 8 px). jitter: integer in [0, gap // 2]. downsample_p, color_drop_p,
    grayscale_p: probabilities in [0, 1] (per patch, per patch, per sample). normalize_patches: bool.
    """

    def __init__(
        self,
        grid_size: int = 96,
        gap: int = 8,
        jitter: int = 3,
        downsample_p: float = 0.0,
        color_drop_p: float = 0.0,
        grayscale_p: float = 0.0,
        normalize_patches: bool = False,
    ):
        check_int("grid_size", grid_size, 24)
        if grid_size % GRID:
            raise ValueError(f"grid_size must be a multiple of 3 (a 3x3 grid of cells), got {grid_size!r}")
        self.grid_size = grid_size
        self.cell = grid_size // GRID
        self.gap = check_int("gap", gap, 0, self.cell - 8)
        self.jitter = check_int(f"jitter (with gap={gap})", jitter, 0, gap // 2)
        self.patch_size = self.cell - gap
        self.downsample_p = check_probability("downsample_p", downsample_p)
        self.color_drop_p = check_probability("color_drop_p", color_drop_p)
        self.grayscale_p = check_probability("grayscale_p", grayscale_p)
        if not isinstance(normalize_patches, bool):
            raise ValueError(f"normalize_patches must be true or false, got {normalize_patches!r}")
        self.normalize_patches = normalize_patches
        # Downsampled sides: 1/4 .. 1/2 of the patch side.
        self.small_sides = (max(2, -(-self.patch_size // 4)), max(2, self.patch_size // 2))

    def __repr__(self) -> str:
        return (
            f"PatchGrid(grid_size={self.grid_size}, gap={self.gap}, jitter={self.jitter}, "
            f"patch_size={self.patch_size}, downsample_p={self.downsample_p}, color_drop_p={self.color_drop_p}, "
            f"grayscale_p={self.grayscale_p}, normalize_patches={self.normalize_patches})"
        )

    def corners(self, positions: torch.Tensor) -> torch.Tensor:
        """positions long [B, K] (CPU) -> corners long [B, K, 2] (top, left), jittered inside their cells."""
        cell_origin = torch.stack([positions // GRID, positions % GRID], dim=-1) * self.cell
        offset = torch.full_like(cell_origin, self.gap // 2)
        if self.jitter:
            offset = offset + torch.randint(-self.jitter, self.jitter + 1, cell_origin.shape)
        return cell_origin + offset

    def __call__(self, images: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"patch tasks need RGB images [B, 3, H, W], got {list(images.shape)}")
        positions = positions.cpu().long()
        batch, k = positions.shape
        n = batch * k
        corners = self.corners(positions)
        grid = resize_to_grid(images, self.grid_size)
        patches = crop_patches(grid, corners[..., 0], corners[..., 1], self.patch_size).flatten(0, 1)
        # All gates and choices are drawn every call, so a seed gives the same patches whatever is on.
        down = torch.rand(n) < self.downsample_p
        sides = torch.randint(self.small_sides[0], self.small_sides[1] + 1, (n,))
        gray = (torch.rand(batch) < self.grayscale_p).repeat_interleave(k)
        dropped = torch.rand(n) < self.color_drop_p
        keep = torch.randint(0, 3, (n,))
        if self.downsample_p > 0:
            patches = downsample_upsample(patches, down, sides)
        if self.grayscale_p > 0:
            unit = to_unit(patches)
            luma = (unit * unit.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            patches = torch.where(gray.to(patches.device).view(n, 1, 1, 1), normalize(luma.expand_as(unit)), patches)
        if self.normalize_patches:
            mean = patches.mean(dim=(1, 2, 3), keepdim=True)
            std = patches.std(dim=(1, 2, 3), keepdim=True)
            patches = (patches - mean) / (std + 1e-5)
        if self.color_drop_p > 0:
            patches = drop_colors(patches, dropped, keep)
        return patches.view(batch, k, *patches.shape[1:]), corners
