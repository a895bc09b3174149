"""Rotation prediction (RotNet; Gidaris, Singh & Komodakis, "Unsupervised Representation Learning
by Predicting Image Rotations", ICLR 2018).

The encoder sees every image of the batch rotated by 0, 90, 180 and 270 degrees and a 4-way head
predicts which rotation was applied. To tell "upright" from "upside down" the network has to
recognise objects, their pose and where they usually sit in the frame.

Details that make it work (from the paper):
- All four rotations of each image go into the *same* step (the batch becomes 4B). The paper
  finds this clearly better than one random rotation per image: the four copies share every
  low-level statistic, so only the image's semantic content can tell them apart.
- Multiples of 90 degrees are exact pixel permutations (``torch.rot90``), so unlike arbitrary
  angles they leave no interpolation or border artefacts the network could use as a shortcut.

Layout: ``rotate_all(x)`` returns the 4B images rotation-major (all images at 0 degrees, then all
at 90, ...) with label k meaning ``torch.rot90(x, k, dims=(-2, -1))``, i.e. k quarter turns
counter-clockwise; ``torch.rot90(rotated, -k, dims=(-2, -1))`` gives the original back.
Images must be square (a quarter turn swaps height and width).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from workloads.pretext.base import (
    PretextStep,
    PretextTask,
    accuracy,
    classifier_head,
    to_unit,
)

ROTATIONS = 4
DEGREES = (0, 90, 180, 270)


def rotate_all(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, W] -> (the 4B rotated images, rotation-major; labels long [4B] in 0..3)."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation prediction needs square images [B, C, H, H], got {list(images.shape)}")
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


class RotationPrediction(PretextTask):
    """4-way rotation classification over the encoder's features.

    hidden: width of the head's hidden layer (an MLP as in base.classifier_head); 0 gives a linear
    head. Integer >= 0.
    """

    chance = 1.0 / ROTATIONS

    def __init__(self, encoder: nn.Module, feature_dim: int, *, hidden: int = 256):
        super().__init__(encoder)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be an integer >= 0 (0: linear head), got {hidden!r}")
        self.hidden = hidden
        self.head = classifier_head(feature_dim, ROTATIONS, hidden) if hidden else nn.Linear(feature_dim, ROTATIONS)

    def logits(self, rotated: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(rotated)).float()  # float32 loss under autocast

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        rotated, labels = rotate_all(images)
        logits = self.logits(rotated)
        return PretextStep(F.cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels)})

    @torch.no_grad()
    def figure(self, images: torch.Tensor, count: int = 4) -> Figure:
        """A few images in their 4 rotations, each titled with the true and predicted rotation."""
        with self.evaluating():  # BatchNorm running statistics, not the few figure images'
            images = images[:count]
            rotated, labels = rotate_all(images)
            predicted = self.logits(rotated).argmax(dim=1)
        pictures = to_unit(rotated.float()).permute(0, 2, 3, 1).cpu().numpy()
        rows = images.shape[0]
        fig = Figure(figsize=(2.0 * ROTATIONS, 2.2 * rows + 0.4), layout="constrained")
        fig.suptitle("Rotation prediction: each image in its 4 rotations (true vs predicted)")
        axes = fig.subplots(rows, ROTATIONS, squeeze=False)
        for k in range(ROTATIONS):
            for r in range(rows):
                i = k * rows + r  # rotation-major layout
                ax = axes[r][k]
                ax.imshow(pictures[i])
                ax.axis("off")
                right = bool(predicted[i] == labels[i])
                ax.set_title(
                    f"true {DEGREES[k]}° / pred {DEGREES[int(predicted[i])]}°",
                    fontsize=8,
                    color="green" if right else "red",
                )
        return fig
