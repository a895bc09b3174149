"""The pretext-task interface every image pretext workload implements.

A task owns an `encoder` (what downstream evaluation keeps: normalised RGB [B, 3, H, W] ->
features [B, D], the same contract as a contrastive backbone) and whatever heads it needs. Its
forward takes a batch of images as the encoder sees them (float, normalised with the task's
`normalization`, lightly augmented by the training loop) and builds its own inputs and labels from them.

`task.normalization` is the data's per-channel mean/std (a run sets the one measured on its training
split; a task built on its own has the CIFAR-10 constants). While the task runs (forward, figure) it
is the active normalisation, so the helpers `normalize` and `to_unit` below, and the Lab encoders,
convert with it without being passed it; code outside a task passes it (`normalize(x, task.normalization)`).
Images are 32x32 in the bundled data; tasks must work for any size >= 32 (the backbones pool globally).

    step = task(images, ids)     # PretextStep(loss, metrics); ids: the images' data-set indices [B]
    step.loss.backward()
    fig = task.figure(images[:8])  # matplotlib Figure showing what the task does, for MLflow

`metrics` are detached scalars named without prefix ("accuracy", "mse", ...); the training loop
averages them over the epoch and records them as `pretext/<name>`. Classification tasks report
"accuracy" and define `chance` (1 / number of classes).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from workloads.data.normalization import (
    CIFAR10,
    Normalization,
    active_normalization,
    using_normalization,
)


@dataclass
class PretextStep:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class PretextTask(nn.Module):
    chance: float | None = None  # classification tasks: the accuracy of guessing
    normalization: Normalization = CIFAR10  # the data's; a run sets the one measured on its training split

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "figure" in cls.__dict__:  # a task's figure converts images with the task's normalisation
            figure = cls.__dict__["figure"]

            @functools.wraps(figure)
            def figure_with_normalization(self, *args, **kw):
                with using_normalization(self.normalization):
                    return figure(self, *args, **kw)

            cls.figure = figure_with_normalization

    def __call__(self, *args, **kwargs):
        with using_normalization(self.normalization):
            return super().__call__(*args, **kwargs)

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:  # pragma: no cover
        """ids (long [B], the images' indices in the training set) serve tasks whose classes are images."""
        raise NotImplementedError

    @torch.no_grad()
    def figure(self, images: torch.Tensor):  # pragma: no cover - interface
        raise NotImplementedError

    @contextmanager
    def evaluating(self):
        """Eval mode (batch-norm statistics, no dropout) for a figure, then the mode it was in."""
        was_training = self.training
        self.eval()
        try:
            with using_normalization(self.normalization):
                yield self
        finally:
            self.train(was_training)


def to_unit(images: torch.Tensor, normalization: Normalization | None = None) -> torch.Tensor:
    """Normalised RGB -> RGB in [0, 1]; normalization: the data's (default: the active one, see above)."""
    return (normalization or active_normalization()).to_unit(images)


def normalize(images: torch.Tensor, normalization: Normalization | None = None) -> torch.Tensor:
    """RGB in [0, 1] -> normalised RGB, as the encoder expects; normalization: the data's (default: the active one)."""
    return (normalization or active_normalization()).normalize(images)


def normalization_of(task: nn.Module) -> Normalization:
    """The normalisation of a task, or of the task inside a DDP wrapper."""
    return getattr(task, "module", task).normalization


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == labels).float().mean()


def classifier_head(in_dim: int, classes: int, hidden: int = 256) -> nn.Module:
    """The small MLP head classification pretext tasks put on the encoder's features."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, classes))
