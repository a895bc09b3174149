"""Tracking as supervision (Wang & Gupta, "Unsupervised Learning of Visual Representations using
Videos", ICCV 2015), with the optional cycle-consistency loss of Wang, Jabri & Efros ("Learning
Correspondence from the Cycle-Consistency of Time", CVPR 2019).

A patch around a tracked object in frame t (the anchor) and the same track's patch ``gap`` frames
later (the positive) must be closer in feature space than the anchor and a patch of something else
(the negative): the object changed pose, lighting and scale between the two frames, so features
that keep them together are invariant to those changes and still tell objects apart.

- Tracks: ``prepare(train)`` takes the data set's own (``train.tracks``: the synthetic generator's
  true trajectories) when there are any, otherwise runs the simple tracker of ``tracker.py`` on
  every training clip. ``forward`` looks the batch's tracks up by the clips' ids; without ids or
  tracks (a figure of arbitrary clips), or when no track of the batch is present (finite) in the
  sampled frames, it tracks the batch's clips itself; a track absent from a frame gives no triplet.
- Patches of ``patch_size`` pixels (>= 8) go to the encoder as they are, not resized: both backbones
  pool globally, so any size works, and no interpolation blurs the small patches.
- Negatives: the positives of the batch's other tracks (other objects of the same clip, and other
  clips). For a ``hard_negative_fraction`` of the anchors the most similar of them (hard negative
  mining, as in the paper), for the rest a random one. A batch with one track only uses the patch
  mirrored through the frame centre.
- Loss: the paper's ranking loss on cosine distance D = 1 - cos, max(0, D(a, p) - D(a, n) + margin),
  i.e. max(0, margin - cos(a, p) + cos(a, n)) on L2-normalised features; margin 0.5 as in the paper.
  Metric "triplet_accuracy": the fraction of triplets with cos(a, p) > cos(a, n).
- ``cycle_consistency``: adds ``cycle_weight`` times a cycle loss: the stride-4 feature map of frame t
  (``feature_map``) walks forward through frames t + 1 .. t + gap and back to t by soft attention
  (each pixel's softmax over the next frame's pixels, cosine similarity / 0.07), and each pixel of
  the anchor patch is penalised by -log of the probability of returning to itself. Wang et al. move a
  patch with a differentiable crop; the walk over all pixels is the simplification of Jabri, Owens &
  Efros (2020), whose temperature it uses. Metric "cycle_loss".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from workloads.pretext.base import PretextStep
from workloads.pretext.checks import check_range
from workloads.video.dataset import VideoDataset
from workloads.video.features import feature_map
from workloads.video.tasks.base import (
    VideoTask,
    check_flag,
    clip_to_unit,
    frames_figure,
)
from workloads.video.tasks.tracker import crop_patches, patch_corners, track_clips

CYCLE_TEMPERATURE = 0.07


class Tracking(VideoTask):
    """Triplet ranking over tracked patches. Hyperparameters: see the module docstring."""

    def __init__(self, encoder: nn.Module, feature_dim: int, *, patch_size: int = 16, margin: float = 0.5,
                 hard_negative_fraction: float = 0.5, cycle_consistency: bool = False, cycle_weight: float = 1.0,
                 gap: int = 4):
        super().__init__(encoder)
        self.patch_size = check_range("patch_size", patch_size, 8, 10_000, integer=True)
        self.margin = float(check_range("margin", margin, 0.0, 2.0))
        self.hard_negative_fraction = float(check_range("hard_negative_fraction", hard_negative_fraction, 0.0, 1.0))
        self.cycle_consistency = check_flag("cycle_consistency", cycle_consistency)
        self.cycle_weight = float(check_range("cycle_weight", cycle_weight, 0.0, 1e6))
        self.gap = check_range("gap", gap, 1, 10_000, integer=True)
        self.tracks: torch.Tensor | None = None  # [N, K, T, 2] of the training clips, on the CPU; not saved

    @property
    def min_frames(self) -> int:
        return self.gap + 1

    def prepare(self, train: VideoDataset) -> None:
        if train.tracks is not None:
            self.tracks = train.tracks.float().cpu()
        else:
            self.tracks = track_clips(train.clips, self.patch_size)

    def batch_tracks(self, clips: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """The tracks [B, K, T, 2] of the batch's clips: looked up by id, or tracked here."""
        if ids is None or self.tracks is None:
            return track_clips(clip_to_unit(clips), self.patch_size).to(clips.device)
        tracks = self.tracks[ids.cpu()]
        if tracks.shape[2] != clips.shape[1]:
            raise ValueError(f"the tracks have {tracks.shape[2]} frames, the clips {clips.shape[1]}: prepare() "
                             f"was given other clips than the ones trained on")
        return tracks.to(clips.device)

    def triplets(self, clips: torch.Tensor, tracks: torch.Tensor):
        """(clip index [n], track index [n], anchor frame per clip [B], anchor and positive centres [n, 2]
        each, anchor and positive patches [n, 3, p, p] each) for the tracks present (finite) in both frames."""
        B, K, T = tracks.shape[:3]
        device = clips.device
        start = torch.randint(0, T - self.gap, (B,)).to(device)  # one anchor frame per clip, for all its tracks
        clip = torch.arange(B, device=device).repeat_interleave(K)
        track = torch.arange(K, device=device).repeat(B)
        at = tracks[clip, track, start[clip]]
        later = tracks[clip, track, start[clip] + self.gap]
        present = at.isfinite().all(dim=1) & later.isfinite().all(dim=1)  # an object may leave the frame
        clip, track, at, later = clip[present], track[present], at[present], later[present]
        anchors = crop_patches(clips[clip, start[clip]], at, self.patch_size)
        positives = crop_patches(clips[clip, start[clip] + self.gap], later, self.patch_size)
        return clip, track, start, at, later, anchors, positives

    def batch_triplets(self, clips: torch.Tensor, ids: torch.Tensor | None):
        out = self.triplets(clips, self.batch_tracks(clips, ids))
        if len(out[0]) == 0:  # no track present in the sampled frames: the batch's clips tracked here
            out = self.triplets(clips, self.batch_tracks(clips, None))
        return out

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(patches).float(), dim=1)

    def negatives(self, sim: torch.Tensor) -> torch.Tensor:
        """sim [n, m] (anchors x pool; column i < n is anchor i's own positive) -> each anchor's negative."""
        n, m = sim.shape
        own = torch.zeros_like(sim, dtype=torch.bool)
        own[torch.arange(n), torch.arange(n)] = True
        hardest = sim.detach().masked_fill(own, float("-inf")).argmax(dim=1)
        shift = torch.randint(1, m, (n,), device=sim.device)  # any column but its own
        random = (torch.arange(n, device=sim.device) + shift) % m
        hard = torch.rand(n, device=sim.device) < self.hard_negative_fraction
        return torch.where(hard, hardest, random)

    def cycle_loss(self, clips: torch.Tensor, clip: torch.Tensor, start: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        B, H, W = clips.shape[0], clips.shape[-2], clips.shape[-1]
        steps = start.unsqueeze(1) + torch.arange(self.gap + 1, device=clips.device)
        frames = clips[torch.arange(B, device=clips.device).unsqueeze(1), steps]  # [B, gap + 1, 3, H, W]
        maps = feature_map(self.encoder, frames.flatten(0, 1))
        with torch.autocast(clips.device.type, enabled=False):  # the walk in float32: its products compound rounding
            return self._walk(maps.float(), B, H, W, clip, at)

    def _walk(self, maps: torch.Tensor, B: int, H: int, W: int, clip: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """maps [B (gap + 1), C, h, w] -> the mean -log P(return) over the anchor patches' cells."""
        h, w = maps.shape[-2:]
        feats = F.normalize(maps.flatten(2), dim=1).view(B, self.gap + 1, -1, h * w).transpose(2, 3)  # [B, g+1, hw, C]
        affinity = feats[:, :-1] @ feats[:, 1:].transpose(2, 3) / CYCLE_TEMPERATURE  # [B, g, hw, hw]: i -> i + 1
        walk = torch.eye(h * w, device=maps.device).expand(B, -1, -1)
        for i in range(self.gap):  # forward through the frames
            walk = walk @ affinity[:, i].softmax(dim=2)
        for i in reversed(range(self.gap)):  # and back
            walk = walk @ affinity[:, i].transpose(1, 2).softmax(dim=2)
        back = walk.diagonal(dim1=1, dim2=2).view(B, h, w)  # the probability of each pixel returning to itself
        stride = H // h
        corner = patch_corners(at, self.patch_size, H, W) // stride
        cells = max(self.patch_size // stride, 1)
        ys = (corner[:, 0:1] + torch.arange(cells, device=maps.device)).clamp(max=h - 1).unsqueeze(2)
        xs = (corner[:, 1:2] + torch.arange(cells, device=maps.device)).clamp(max=w - 1).unsqueeze(1)
        return -(back[clip.view(-1, 1, 1), ys, xs] + 1e-8).log().mean()

    def forward(self, clips: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        self.check_clips(clips)
        clip, _, start, at, _, anchors, positives = self.batch_triplets(clips, ids)
        n = len(anchors)
        pool = positives
        if n == 1:  # no other track: the patch mirrored through the frame centre
            mirrored = torch.tensor(clips.shape[-2:], device=clips.device) - at
            pool = torch.cat([positives, crop_patches(clips[clip, start[clip]], mirrored, self.patch_size)])
        feats = self.embed(torch.cat([anchors, pool]))  # one batch: the same BatchNorm statistics for all
        with torch.autocast(clips.device.type, enabled=False):  # the similarities and the loss in float32
            sim = feats[:n] @ feats[n:].T
        s_ap = sim.diagonal()
        s_an = sim.gather(1, self.negatives(sim).unsqueeze(1)).squeeze(1)
        loss = (self.margin - s_ap + s_an).clamp_min(0.0).mean()
        metrics = {"triplet_accuracy": (s_ap > s_an).float().mean().detach()}
        if self.cycle_consistency:
            cycle = self.cycle_loss(clips, clip, start, at)
            loss = loss + self.cycle_weight * cycle
            metrics["cycle_loss"] = cycle.detach()
        return PretextStep(loss, metrics)

    @torch.no_grad()
    def figure(self, clips: torch.Tensor, count: int = 4) -> Figure:
        """Per clip: the anchor and positive frames with the track's patch outlined, then the anchor,
        positive and hardest-negative patches with their cosine similarity to the anchor."""
        with self.evaluating():
            clips = clips[:count]
            clip, track, start, at, later, anchors, positives = self.batch_triplets(clips, None)
            feats = self.embed(torch.cat([anchors, positives])).float()
            sim = feats[: len(anchors)] @ feats[len(anchors):].T
            own = torch.eye(len(anchors), dtype=torch.bool, device=sim.device)
            hardest = sim.masked_fill(own, float("-inf")).argmax(dim=1) if len(anchors) > 1 else torch.zeros_like(clip)
        H, W = clips.shape[-2:]
        rows = []
        firsts = [i for i in range(len(clip)) if i == 0 or clip[i] != clip[i - 1]]  # one track per clip
        for i in firsts:
            b, t = int(clip[i]), int(start[clip[i]])
            frames = clip_to_unit(clips[b, [t, t + self.gap]]).clone()
            for frame, centre in zip(frames, (at[i], later[i])):
                outline(frame, patch_corners(centre, self.patch_size, H, W), self.patch_size)
            patches = clip_to_unit(torch.stack([anchors[i], positives[i], positives[hardest[i]]]))
            s_ap, s_an = float(sim[i, i]), float(sim[i, hardest[i]])
            right = "+" if s_ap > s_an else "-"
            rows.append((f"clip {b}, track {int(track[i])}",
                         [*frames, *patches],
                         [f"frame {t}", f"frame {t + self.gap}", "anchor", f"{right}positive {s_ap:.2f}",
                          f"{right}negative {s_an:.2f}"]))
        return frames_figure("Tracking (Wang & Gupta): anchor closer to its later self than to other patches?", rows)


def outline(frame: torch.Tensor, corner: torch.Tensor, size: int) -> None:
    """Draw a red square outline (top-left ``corner``, side ``size``) into an RGB frame [3, H, W] in place."""
    y, x = int(corner[0]), int(corner[1])
    red = torch.tensor([1.0, 0.0, 0.0], device=frame.device).view(3, 1)
    frame[:, y, x:x + size] = red
    frame[:, y + size - 1, x:x + size] = red
    frame[:, y:y + size, x] = red
    frame[:, y:y + size, x + size - 1] = red
