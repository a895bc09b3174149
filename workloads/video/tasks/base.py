"""The interface every video pretext task implements, and what the four tasks share.

A video task is a PretextTask (see ``workloads/pretext/base.py``) whose forward takes clips instead
of images: float ``[B, T, 3, H, W]``, every frame already normalised per channel with the task's
``normalization`` (what the encoder expects), and the clips' int64 indices in the training
VideoDataset. The encoder is still an image encoder (normalised RGB ``[B, 3, H, W]`` -> ``[B, D]``):
what downstream evaluation keeps is a per-frame network, and the tasks build their inputs and labels
from the frames.

    task.prepare(train)          # once, before training: tracks, k-means colour clusters, ...
    step = task(clips, ids)      # PretextStep(loss, metrics)
    fig = task.figure(clips[:4]) # what the task asks and answers, for MLflow

``min_frames``: the fewest frames a clip must have for the task (forward raises a ValueError below it).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from workloads.pretext.base import PretextStep, PretextTask, normalize, to_unit
from workloads.video.dataset import VideoDataset


class VideoTask(PretextTask):
    min_frames: int = 2

    def prepare(self, train: VideoDataset) -> None:
        """Fit what the task needs from the training clips (default: nothing)."""

    def forward(self, clips: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:  # pragma: no cover
        raise NotImplementedError

    def check_clips(self, clips: torch.Tensor) -> None:
        """A ValueError naming the task when clips are not [B, T, 3, H, W] with T >= min_frames."""
        if clips.ndim != 5 or clips.shape[2] != 3:
            raise ValueError(f"{type(self).__name__} takes clips [B, T, 3, H, W], got {list(clips.shape)}")
        if clips.shape[1] < self.min_frames:
            raise ValueError(f"{type(self).__name__} needs clips of at least {self.min_frames} frames "
                             f"with these settings, got {clips.shape[1]}")

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [..., 3, H, W] -> encoder features [..., D] (all frames in one batch)."""
        lead = frames.shape[:-3]
        return self.encoder(frames.reshape(-1, *frames.shape[-3:])).float().reshape(*lead, -1)


def clip_to_unit(clips: torch.Tensor) -> torch.Tensor:
    """Normalised clips [..., 3, H, W] -> RGB in [0, 1] (float32), with the active normalisation."""
    shape = clips.shape
    return to_unit(clips.float().reshape(-1, *shape[-3:])).reshape(shape)


def clip_normalize(clips: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] [..., 3, H, W] -> normalised, with the active normalisation."""
    shape = clips.shape
    return normalize(clips.reshape(-1, *shape[-3:])).reshape(shape)


def frame_differences(unit: torch.Tensor) -> torch.Tensor:
    """Clips in [0, 1] [..., T, 3, H, W] -> the mean |difference| of consecutive frames [..., T - 1]."""
    return (unit[..., 1:, :, :, :] - unit[..., :-1, :, :, :]).abs().mean(dim=(-3, -2, -1))


def check_flag(name: str, value) -> bool:
    """Validate a true/false hyperparameter (not 0 or 1, not a string). Returns the value."""
    if value is not True and value is not False:
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def zero_loss(task: torch.nn.Module) -> torch.Tensor:
    """A zero loss connected to every parameter (a step with nothing to learn from keeps backward and
    DistributedDataParallel's gradient reduction working)."""
    return sum(p.sum() * 0.0 for p in task.parameters())


def frames_figure(title: str, rows: list[tuple[str, Sequence[torch.Tensor], list[str]]], cell: float = 1.3) -> Figure:
    """A figure of frame rows: (row title, RGB images in [0, 1] (a tensor [n, 3, H, W] or a list of
    [3, H, W] of any sizes), one caption per image; a caption starting with "+" is drawn green, "-" red)."""
    n = max(len(frames) for _, frames, _ in rows)
    fig = Figure(figsize=(max(cell * n, 0.07 * len(title)) + 0.3, (cell + 0.6) * len(rows) + 0.4), layout="constrained")
    fig.suptitle(title, fontsize=9)
    for panel, (row_title, frames, captions) in zip(fig.subfigures(len(rows), 1, squeeze=False)[:, 0], rows):
        panel.suptitle(row_title, fontsize=8, x=0.01, ha="left")  # a subfigure per row: the title takes no column's room
        for c, ax in enumerate(panel.subplots(1, n, squeeze=False)[0]):
            ax.set_axis_off()
            if c < len(frames):
                ax.imshow(frames[c].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
                caption = captions[c] if c < len(captions) else ""
                color = {"+": "green", "-": "red"}.get(caption[:1], "black")
                ax.set_title(caption.lstrip("+-"), fontsize=7, color=color)
    return fig
