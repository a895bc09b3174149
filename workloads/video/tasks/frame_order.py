"""Frame order verification (Shuffle & Learn; Misra, Zitnick & Hebert, "Shuffle and Learn:
Unsupervised Learning using Temporal Order Verification", ECCV 2016).

Three frames of a clip are shown in some order and a binary classifier says whether the order is
correct. To tell (b, c, d) from (b, a, d) the network has to notice how the scene moves, pose and
position of what moves included.

Details from the paper:
- Five frames a, b, c, d, e spread over a window of the clip (here ``window`` consecutive frames:
  a is its first, e its last, b, c, d evenly between). Positives are (b, c, d) and its reverse
  (d, c, b): a motion played backwards is a valid motion, so both count as the correct order.
  Negatives are (b, a, d) and (b, e, d): the same first and last frame, a middle frame from outside.
- ``negatives_fraction`` of the tuples are negatives (the paper uses 75%).
- Tuples only from high-motion windows: a window with nothing moving has no order to verify. The
  paper ranks windows by optical flow magnitude; here by the mean |frame difference| (a documented,
  flow-free stand-in: cheap, and large where things move or the camera pans). Windows whose motion
  is at or above the ``motion_quantile`` of the batch's windows are kept; one tuple per kept window.
- One encoder with shared weights embeds the three frames; their features are concatenated in the
  tuple's order and an MLP (``hidden`` units) classifies. Every frame is encoded once per step,
  however many tuples use it.

Departures from the paper (measured with bench/video_tasks.py on the synthetic moving objects):
- The head sees, after the three features f1, f2, f3 in tuple order, their pairwise distances
  |f1 - f2|, |f2 - f3|, |f1 - f3| (per feature). The answer is in how far the middle frame is from the
  outer ones (a frame from outside the b..d span is further from one of them), and an MLP on the bare
  concatenation has to learn that subtraction from features dominated by what differs between clips
  (objects, background): with the small ConvNet it stayed on the majority answer for 300 steps
  (held-out balanced accuracy 0.50); with the distances given, 0.87-0.93 after 108 steps.
- Negatives are drawn in both directions too, (b, a, d), (b, e, d), (d, a, b) and (d, e, b): with the
  paper's two, every tuple whose first frame is later than its last is a positive, so a network that
  tells the direction of time between the outer frames (which real video, and the synthetic clips with
  ``friction``, allow) would score on half the positives without looking at the middle frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from workloads.pretext.base import PretextStep, accuracy, classifier_head
from workloads.pretext.checks import check_range
from workloads.video.tasks.base import (
    VideoTask,
    clip_to_unit,
    frame_differences,
    frames_figure,
)

POSITIVES = ((1, 2, 3), (3, 2, 1))  # (b, c, d) and (d, c, b): indices into (a, b, c, d, e)
NEGATIVES = ((1, 0, 3), (1, 4, 3), (3, 0, 1), (3, 4, 1))  # (b, a, d), (b, e, d) and both reversed


def window_positions(window: int) -> torch.Tensor:
    """Offsets of a, b, c, d, e in a window of ``window`` frames (a first, e last, evenly spread)."""
    return torch.linspace(0, window - 1, 5).round().long()


def window_motion(unit: torch.Tensor, window: int) -> torch.Tensor:
    """Clips in [0, 1] [B, T, 3, H, W] -> the mean |frame difference| of each window [B, T - window + 1]."""
    steps = frame_differences(unit)  # [B, T - 1]
    return steps.unfold(1, window - 1, 1).mean(dim=2)


def select_windows(motion: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows whose motion is at or above the quantile of all the batch's windows:
    (clip index [n], window start [n]). The most moving window always qualifies."""
    threshold = torch.quantile(motion.flatten().float(), quantile)
    clip, start = torch.nonzero(motion >= threshold, as_tuple=True)
    return clip, start


def sample_tuples(starts: torch.Tensor, window: int, negatives_fraction: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One tuple per window start: (frame indices [n, 3] in the clip, labels [n]: 1 correct order, 0 not).

    A tuple is a negative with probability ``negatives_fraction``; a positive picks one of its two
    orders, a negative one of its four, uniformly.
    """
    n = len(starts)
    negative = torch.rand(n, generator=generator) < negatives_fraction
    which = torch.randint(0, len(NEGATIVES), (n,), generator=generator)
    orders = torch.where(negative.unsqueeze(1), torch.tensor(NEGATIVES)[which],
                         torch.tensor(POSITIVES)[which % len(POSITIVES)])
    frames = starts.cpu().unsqueeze(1) + window_positions(window)[orders]
    return frames, (~negative).long()


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean of the in-order and shuffled recalls: chance is 0.5 whatever negatives_fraction is (plain
    accuracy rewards always answering "shuffled" with negatives_fraction, 0.75 by default)."""
    hits = (logits.detach().argmax(dim=1) == labels).float()
    return torch.stack([hits[labels == c].mean() for c in (0, 1) if bool((labels == c).any())]).mean()


class FrameOrder(VideoTask):
    """Binary order verification of frame triplets. Hyperparameters: see the module docstring."""

    chance = 0.5

    def __init__(self, encoder: nn.Module, feature_dim: int, *, negatives_fraction: float = 0.75, window: int = 5,
                 motion_quantile: float = 0.5, hidden: int = 256):
        super().__init__(encoder)
        self.negatives_fraction = float(check_range("negatives_fraction", negatives_fraction, 0.0, 1.0))
        self.window = check_range("window", window, 5, 10_000, integer=True)  # 5: a..e must be distinct frames
        self.motion_quantile = float(check_range("motion_quantile", motion_quantile, 0.0, 1.0))
        self.hidden = check_range("hidden", hidden, 1, 1_000_000, integer=True)
        self.head = classifier_head(6 * feature_dim, 2, self.hidden)  # 3 features, 3 pairwise distances

    @property
    def min_frames(self) -> int:
        return self.window

    def tuples(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clip index [n], frame indices [n, 3], labels [n]) for a batch of normalised clips."""
        with torch.no_grad():
            motion = window_motion(clip_to_unit(clips), self.window)
        clip, start = select_windows(motion.cpu(), self.motion_quantile)
        frames, labels = sample_tuples(start, self.window, self.negatives_fraction)
        return clip, frames, labels

    def logits(self, clips: torch.Tensor, clip: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        T = clips.shape[1]
        flat = clip.unsqueeze(1) * T + frames  # [n, 3] indices into the batch's B * T frames
        used, where = torch.unique(flat, return_inverse=True)  # encode each used frame once
        feats = self.encode_frames(clips.reshape(-1, *clips.shape[2:])[used.to(clips.device)])
        first, middle, last = feats[where.to(clips.device)].unbind(1)  # [n, D] each, in tuple order
        fused = torch.cat([first, middle, last, (first - middle).abs(), (middle - last).abs(), (first - last).abs()], 1)
        return self.head(fused).float()

    def forward(self, clips: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        self.check_clips(clips)
        clip, frames, labels = self.tuples(clips)
        logits = self.logits(clips, clip, frames)
        labels = labels.to(logits.device)
        return PretextStep(F.cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels),
                                                             "balanced_accuracy": balanced_accuracy(logits, labels)})

    @torch.no_grad()
    def figure(self, clips: torch.Tensor, count: int = 4) -> Figure:
        """One tuple per clip, in the order shown to the network, with its true and predicted answer."""
        with self.evaluating():
            clips = clips[:count]
            clip, frames, labels = self.tuples(clips)
            pick = torch.stack([torch.nonzero(clip == c)[0, 0] for c in clip.unique()])  # a tuple per clip
            clip, frames, labels = clip[pick], frames[pick], labels[pick]
            predicted = self.logits(clips, clip, frames).argmax(dim=1).cpu()
        words = ("shuffled", "in order")
        rows = []
        for c, f, y, p in zip(clip.tolist(), frames, labels.tolist(), predicted.tolist()):
            right = "+" if y == p else "-"
            captions = [f"{right}frame {int(i)}" for i in f]
            rows.append((f"clip {c}: true {words[y]}, predicted {words[p]}", clip_to_unit(clips[c, f]), captions))
        return frames_figure("Frame order (Shuffle & Learn): is the middle frame between the others?", rows)
