"""The pretext-task interface every image pretext workload implements.

A task owns an `encoder` (what downstream evaluation keeps: normalised RGB [B, 3, H, W] ->
features [B, D], the same contract as a contrastive backbone) and whatever heads it needs. Its
forward takes a batch of images as the encoder sees them (float, normalised with the CIFAR-10
mean/std, lightly augmented by the training loop) and builds its own inputs and labels from them.
Images are 32x32 in the bundled data; tasks must work for any size >= 32 (the backbones pool globally).

    step = task(images, ids)     # PretextStep(loss, metrics); ids: the images' data-set indices [B]
    step.loss.backward()
    fig = task.figure(images[:8])  # matplotlib Figure showing what the task does, for MLflow

`metrics` are detached scalars named without prefix ("accuracy", "mse", ...); the training loop
averages them over the epoch and records them as `pretext/<name>`. Classification tasks report
"accuracy" and define `chance` (1 / number of classes).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..evaluate.features import CIFAR10_MEAN, CIFAR10_STD


@dataclass
class PretextStep:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class PretextTask(nn.Module):
    chance: float | None = None  # classification tasks: the accuracy of guessing

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

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
            yield self
        finally:
            self.train(was_training)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Normalised RGB (CIFAR-10 mean/std) -> RGB in [0, 1]."""
    mean = images.new_tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> normalised RGB (CIFAR-10 mean/std), as the encoder expects."""
    mean = images.new_tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == labels).float().mean()


def classifier_head(in_dim: int, classes: int, hidden: int = 256) -> nn.Module:
    """The small MLP head classification pretext tasks put on the encoder's features."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, classes))
