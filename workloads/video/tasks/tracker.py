"""A simple tracker for clips without ground-truth tracks: a motion cue, then template matching.

Wang & Gupta (2015) get their tracks by finding moving patches with SURF keypoints and optical flow
and following them with KCF. Without those tools this follows their recipe in its simplest form:

1. Motion: each frame's difference to the clip's median frame, |frame - median over time| (for a
   still camera the median is the background, so this is what moves; for a panning one, everything).
2. Motion cue: in the first frame, the ``patch`` x ``patch`` box with the most difference magnitude
   (box-filtered, over the frame's median level: noise and flicker are everywhere, motion is not)
   holds what moves; the track starts at the centroid of the magnitude inside that box (the box
   alone ties over every position that contains the moving thing; the centroid centres it).
3. Following: frame by frame, the patch around the current position (the template, taken from the
   previous frame so that slow changes of appearance are followed) is matched by normalised
   cross-correlation (NCC: zero-mean, unit-norm patches, their dot product) against every position
   of a search window ``radius`` pixels around it in the next frame (a grouped ``conv2d`` and box
   sums; see ``ncc_step``); the best match is the new position. Matching runs on the motion
   images of step 1, not the raw frames: on raw frames a small object inside the patch loses to the
   static background texture around it, which matches best by not moving (seen: a 6-pixel square at
   1 pixel per frame over noise was lost within a few frames; on the motion images it is followed
   to within 0.4 pixels).

Positions are (y, x) patch centres in pixels, the top-left corner plus ``patch / 2``; patches stay
inside the frame (their corner is clamped), so a centre is at least ``patch / 2`` from the edges.
``crop_patches`` cuts such patches out of frames for the tracker and for the tracking task.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_CHUNK = 64  # clips tracked at once: bounds the unfolded search windows' memory


def patch_corners(centres: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """(y, x) centres [..., 2] -> the top-left corners [..., 2] (long) of size x size patches inside the frame."""
    corner = (centres - size / 2).round().long()
    return torch.stack([corner[..., 0].clamp(0, height - size), corner[..., 1].clamp(0, width - size)], dim=-1)


def crop_patches(frames: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """frames [M, C, H, W], (y, x) centres [M, 2] -> the patches [M, C, size, size] around them."""
    M, _, H, W = frames.shape
    if size > min(H, W):
        raise ValueError(f"patch size {size} is larger than the {H}x{W} frames")
    corner = patch_corners(centres.to(frames.device), size, H, W)
    span = torch.arange(size, device=frames.device)
    ys = (corner[:, 0:1] + span).unsqueeze(2)  # [M, size, 1]
    xs = (corner[:, 1:2] + span).unsqueeze(1)  # [M, 1, size]
    patches = frames[torch.arange(M, device=frames.device).view(M, 1, 1), :, ys, xs]  # [M, size, size, C]
    return patches.permute(0, 3, 1, 2)


def foreground(unit: torch.Tensor) -> torch.Tensor:
    """Clips in [0, 1] [N, T, 3, H, W] -> |frame - the clip's median frame| [N, T, 3, H, W]: what moves
    (the median over time of a static camera's frames is the background)."""
    return (unit - unit.median(dim=1, keepdim=True).values).abs()


def motion_cue(moving: torch.Tensor, patch: int) -> torch.Tensor:
    """A frame's motion magnitude [N, C, H, W] -> the (y, x) centre [N, 2] of what moves most in it."""
    energy = moving.sum(dim=1, keepdim=True)  # [N, 1, H, W]
    floor = energy.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)  # noise and flicker everywhere: not motion
    energy = (energy - floor).clamp_min(0.0)
    box = F.avg_pool2d(energy, patch, stride=1).flatten(1)  # [N, (H - p + 1) * (W - p + 1)], index = corner
    cols = moving.shape[-1] - patch + 1
    best = box.argmax(dim=1)
    top, left = best // cols, best % cols
    inside = crop_patches(energy, torch.stack([top, left], 1).float() + patch / 2, patch)[:, 0]  # [N, p, p]
    mass = inside.sum(dim=(1, 2))
    span = torch.arange(patch, device=moving.device, dtype=moving.dtype) + 0.5  # pixel centres
    cy = (inside.sum(dim=2) * span).sum(dim=1) / mass.clamp_min(1e-8)
    cx = (inside.sum(dim=1) * span).sum(dim=1) / mass.clamp_min(1e-8)
    still = mass <= 1e-8  # nothing moves: the box centre
    cy, cx = torch.where(still, patch / 2, cy), torch.where(still, patch / 2, cx)
    return torch.stack([top + cy, left + cx], dim=1)


def ncc_step(previous: torch.Tensor, current: torch.Tensor, centres: torch.Tensor, patch: int, radius: int) -> torch.Tensor:
    """One tracking step: frames [N, C, H, W] at t - 1 and t, centres at t - 1 [N, 2] -> centres at t.

    NCC(x) = sum(t * (x - mean x)) / |x - mean x| for the zero-mean, unit-norm template t, which is
    sum(t * x) / |x - mean x| as t sums to 0: the numerator is one (grouped) convolution of each
    window with its clip's template, the denominator box sums of x and x^2 (avg_pool2d).
    """
    N, C, H, W = current.shape
    template = crop_patches(previous, centres, patch)  # [N, C, p, p]
    template = template - template.mean(dim=(1, 2, 3), keepdim=True)
    template = template / template.flatten(1).norm(dim=1).clamp_min(1e-6).view(N, 1, 1, 1)
    size = min(patch + 2 * radius, H, W)  # the search window, inside the frame
    window_corner = patch_corners(centres, size, H, W)
    window = crop_patches(current, window_corner.float() + size / 2, size)  # [N, C, size, size]
    dot = F.conv2d(window.reshape(1, N * C, size, size), template, groups=N)[0]  # [N, L, L], L = size - p + 1
    count = C * patch * patch
    total = F.avg_pool2d(window.sum(dim=1, keepdim=True), patch, stride=1)[:, 0] * (patch * patch)
    squares = F.avg_pool2d(window.square().sum(dim=1, keepdim=True), patch, stride=1)[:, 0] * (patch * patch)
    spread = (squares - total.square() / count).clamp_min(0.0).sqrt().clamp_min(1e-6)
    best = (dot / spread).flatten(1).argmax(dim=1)
    span = size - patch + 1
    corner = window_corner + torch.stack([best // span, best % span], dim=1)
    return corner.float() + patch / 2


@torch.no_grad()
def track_clips(clips: torch.Tensor, patch: int = 16, radius: int | None = None) -> torch.Tensor:
    """Clips [N, T, 3, H, W] (uint8, or float in [0, 1]) -> one track per clip [N, 1, T, 2]: (y, x)
    centres of the moving patch, in pixels. ``radius``: the search window's reach (default patch / 2)."""
    radius = patch // 2 if radius is None else radius
    tracks = []
    for chunk in clips.split(_CHUNK):
        unit = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
        moving = foreground(unit)
        centres = [motion_cue(moving[:, 0], patch)]
        for t in range(1, unit.shape[1]):
            centres.append(ncc_step(moving[:, t - 1], moving[:, t], centres[-1], patch, radius))
        tracks.append(torch.stack(centres, dim=1))
    return torch.cat(tracks).unsqueeze(1)
