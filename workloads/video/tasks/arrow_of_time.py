"""Arrow of time (Wei, Lim, Zisserman & Freeman, "Learning and Using the Arrow of Time", CVPR 2018).

Each clip is played forward or backward (probability 1/2) and the network says which. Physics is
not time-symmetric (things fall, smoke spreads, people walk forwards), so the answer needs an
understanding of how the world moves.

Details from the paper:
- ``frames`` consecutive frames from a random start; the encoder embeds each step, either the frame
  itself (``input="frames"``) or the difference of consecutive frames (``input="differences"``, a
  flow-free stand-in for the paper's optical-flow input: it shows what changed and where). A
  difference in [-1, 1] is shown to the encoder as the image (1 + d) / 2, normalised like a frame:
  no change is mid-grey, brightening lighter, darkening darker. The per-step features are
  concatenated in playing order and an MLP (``hidden`` units) predicts the direction; the paper's
  T-CAM fuses per-step features late in the same way.
- Shortcuts removed: black borders (letterboxing, and the black corners a stabilised camera leaves)
  can reveal the direction from how they move, so rows and columns that stay near black over the
  whole clip are cropped away and the frames resized back (``crop_borders``).
- Clips that cannot be told apart are left out of the loss ("rejected"): static ones (mean |frame
  difference| below ``static_threshold`` in [0, 1] units) and ones with a shot cut (a step whose
  mean |difference| exceeds ``cut_threshold``: a cut is a jump, not motion).
Metrics: "accuracy" (over the kept clips) and "rejected" (the fraction left out).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from workloads.pretext.base import PretextStep, accuracy, classifier_head
from workloads.pretext.checks import check_choice, check_range
from workloads.video.tasks.base import (
    VideoTask,
    check_flag,
    clip_normalize,
    clip_to_unit,
    frame_differences,
    frames_figure,
    zero_loss,
)

INPUTS = ("differences", "frames")
BLACK = 0.06  # a pixel at or below ~15/255 in every channel counts as black


def reverse(clip: torch.Tensor) -> torch.Tensor:
    """A clip [..., T, 3, H, W] played backwards."""
    return clip.flip(-4)


def crop_black_borders(clip: torch.Tensor, black: float = BLACK) -> torch.Tensor:
    """A clip in [0, 1] [T, 3, H, W] without the rows and columns at its edges that stay black in every
    frame, resized back to H x W (bilinear). A clip black everywhere is returned as it is."""
    H, W = clip.shape[-2:]
    bright = clip.amax(dim=(0, 1)) > black  # [H, W]: ever brighter than black
    rows = torch.nonzero(bright.any(dim=1)).flatten()
    cols = torch.nonzero(bright.any(dim=0)).flatten()
    if len(rows) == 0:
        return clip
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (top, bottom, left, right) == (0, H, 0, W):
        return clip
    inner = clip[:, :, top:bottom, left:right]
    return F.interpolate(inner.float(), size=(H, W), mode="bilinear", align_corners=False).to(clip.dtype)


def is_static(clip: torch.Tensor, threshold: float) -> torch.Tensor:
    """Clips in [0, 1] [..., T, 3, H, W] -> bool [...]: mean |frame difference| below the threshold."""
    return frame_differences(clip).mean(dim=-1) < threshold


def has_cut(clip: torch.Tensor, threshold: float) -> torch.Tensor:
    """Clips in [0, 1] [..., T, 3, H, W] -> bool [...]: some step's mean |difference| above the threshold."""
    return frame_differences(clip).amax(dim=-1) > threshold


class ArrowOfTime(VideoTask):
    """Forward-or-backward classification of short clips. Hyperparameters: see the module docstring."""

    chance = 0.5

    def __init__(self, encoder: nn.Module, feature_dim: int, *, frames: int = 4, input: str = "differences",
                 crop_borders: bool = True, static_threshold: float = 0.02, cut_threshold: float = 0.35,
                 hidden: int = 256):
        super().__init__(encoder)
        self.frames = check_range("frames", frames, 2, 10_000, integer=True)
        self.input = check_choice("input", input, INPUTS)
        self.crop_borders = check_flag("crop_borders", crop_borders)
        self.static_threshold = float(check_range("static_threshold", static_threshold, 0.0, 1.0))
        self.cut_threshold = float(check_range("cut_threshold", cut_threshold, 0.0, 1.0))
        self.hidden = check_range("hidden", hidden, 1, 1_000_000, integer=True)
        self.steps = self.frames - 1 if self.input == "differences" else self.frames
        self.head = classifier_head(self.steps * feature_dim, 2, self.hidden)

    @property
    def min_frames(self) -> int:
        return self.frames

    def prepare_clips(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised clips -> (the played segments in [0, 1] [B, frames, 3, H, W], labels [B]: 1 forward,
        kept [B]: neither static nor cut)."""
        unit = clip_to_unit(clips)
        if self.crop_borders:  # borders found over the whole clip: more frames, fewer dark scenes taken for bars
            unit = torch.stack([crop_black_borders(c) for c in unit])
        B, T = unit.shape[:2]
        start = torch.randint(0, T - self.frames + 1, (B,)).to(unit.device)
        steps = start.unsqueeze(1) + torch.arange(self.frames, device=unit.device)
        segment = unit[torch.arange(B, device=unit.device).unsqueeze(1), steps]
        kept = ~(is_static(segment, self.static_threshold) | has_cut(segment, self.cut_threshold))
        forward = torch.rand(B, device=unit.device) < 0.5
        played = torch.where(forward.view(B, 1, 1, 1, 1), segment, reverse(segment))
        return played, forward.long(), kept

    def logits(self, played: torch.Tensor) -> torch.Tensor:
        steps = played[:, 1:] - played[:, :-1] if self.input == "differences" else played
        if self.input == "differences":
            steps = (1.0 + steps) / 2.0  # [-1, 1] -> [0, 1]: no change is mid-grey
        feats = self.encode_frames(clip_normalize(steps))  # [B, steps, D]
        return self.head(feats.flatten(1)).float()

    def forward(self, clips: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        self.check_clips(clips)
        played, labels, kept = self.prepare_clips(clips)
        logits = self.logits(played)  # every clip goes through the network, so every parameter has a gradient
        losses = F.cross_entropy(logits, labels, reduction="none")
        rejected = 1.0 - kept.float().mean()
        if not kept.any():  # nothing to learn from; accuracy over all clips so every step reports the same metrics
            return PretextStep(zero_loss(self) + 0.0 * losses.sum(),
                               {"accuracy": accuracy(logits, labels), "rejected": rejected})
        loss = (losses * kept).sum() / kept.sum()
        return PretextStep(loss, {"accuracy": accuracy(logits[kept], labels[kept]), "rejected": rejected})

    @torch.no_grad()
    def figure(self, clips: torch.Tensor, count: int = 4) -> Figure:
        """Each clip's segment as played to the network, with the true and predicted direction."""
        with self.evaluating():
            played, labels, kept = self.prepare_clips(clips[:count])
            predicted = self.logits(played).argmax(dim=1)
        words = ("backward", "forward")
        rows = []
        for i in range(len(played)):
            y, p = int(labels[i]), int(predicted[i])
            note = "" if kept[i] else " (rejected: static or cut)"
            caption = ("+" if y == p else "-") + "step {}"
            rows.append((f"clip {i}: true {words[y]}, predicted {words[p]}{note}", played[i],
                         [caption.format(t) for t in range(self.frames)]))
        return frames_figure("Arrow of time: is the clip played forward or backward?", rows)
