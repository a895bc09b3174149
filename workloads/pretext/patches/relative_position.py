"""Relative position of two patches (Doersch, Gupta & Efros, "Unsupervised Visual Representation
Learning by Context Prediction", ICCV 2015).

From each image the centre patch of a 3x3 grid and one of its 8 neighbours, chosen at random, are
cut (workloads/pretext/patches.py); both go through the shared encoder, their features are
concatenated (centre first) and an MLP head predicts where the neighbour sits: 8 classes, label
0..7 = top-left, top, top-right, left, right, bottom-left, bottom, bottom-right. Telling "the
wheel is below the car door" needs object parts to be recognised. Chance is 1/8.

Details that make it work (from the paper) are the measures against shortcuts, on by default except
downsampling (CIFAR patches are already pixelated): a gap between patches and a random jitter of
each patch (no continuing lines or textures to match) and colour dropping, 2 of 3 channels per
patch replaced by faint noise (no chromatic aberration to locate a patch in the frame). Each one is
a constructor argument; see patches.py for what each does and its valid range.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from workloads.pretext.base import (
    PretextStep,
    PretextTask,
    accuracy,
    classifier_head,
    to_unit,
)
from workloads.pretext.patches.grid import (
    CENTRE,
    GRID,
    POSITION_NAMES,
    PatchGrid,
    check_int,
)

NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # label -> grid position of the neighbour


class RelativePosition(PretextTask):
    """8-way classification of a neighbour patch's position relative to the centre patch.

    hidden: width of the head's hidden layer (base.classifier_head), 0 for a linear head; integer >= 0.
    color_drop_p (default 1: chromatic aberration), grid: PatchGrid's grid_size, gap, jitter, downsample_p.
    """

    chance = 1.0 / len(NEIGHBOURS)

    def __init__(self, encoder: nn.Module, feature_dim: int, *, color_drop_p: float = 1.0, hidden: int = 256, **grid):
        super().__init__(encoder)
        self.grid = PatchGrid(color_drop_p=color_drop_p, **grid)
        self.hidden = check_int("hidden", hidden, 0)
        classes = len(NEIGHBOURS)
        pair = 2 * feature_dim  # centre and neighbour features, concatenated
        self.head = classifier_head(pair, classes, hidden) if hidden else nn.Linear(pair, classes)

    def extra_repr(self) -> str:
        return repr(self.grid)

    def pairs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (patches [B, 2, 3, S, S]: centre then neighbour; labels long [B] on the images' device;
        corners long [B, 2, 2] (top, left) on the CPU)."""
        labels = torch.randint(0, len(NEIGHBOURS), (images.shape[0],))
        positions = torch.stack([torch.full_like(labels, CENTRE), torch.tensor(NEIGHBOURS)[labels]], dim=1)
        patches, corners = self.grid(images, positions)
        return patches, labels.to(images.device), corners

    def logits(self, patches: torch.Tensor) -> torch.Tensor:
        features = self.encoder(patches.flatten(0, 1))  # both patches of every pair in one batch
        return self.head(features.view(patches.shape[0], -1)).float()  # float32 loss under autocast

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        patches, labels, _ = self.pairs(images)
        logits = self.logits(patches)
        return PretextStep(F.cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels)})

    @torch.no_grad()
    def figure(self, images: torch.Tensor, count: int = 6) -> Figure:
        """Each image above its centre/neighbour pair, drawn where they were cut; a box marks the
        predicted position (green if right, red if wrong)."""
        with self.evaluating():  # BatchNorm running statistics, not the few figure images'
            with torch.random.fork_rng(devices=[]):  # same pairs every epoch; training's RNG untouched
                torch.manual_seed(0)
                images = images[:count]
                patches, labels, corners = self.pairs(images)
            predicted = self.logits(patches).argmax(dim=1).cpu()
        labels = labels.cpu()
        size = self.grid.grid_size
        side = self.grid.patch_size
        fig = Figure(figsize=(2.0 * len(images), 4.6), layout="constrained")
        fig.suptitle("Relative position: image; centre + neighbour patch (as the encoder sees them), box = predicted")
        axes = fig.subplots(2, len(images), squeeze=False)
        originals = to_unit(images.float()).permute(0, 2, 3, 1).cpu().numpy()
        pictures = to_unit(patches.flatten(0, 1).float()).view(*patches.shape).permute(0, 1, 3, 4, 2).cpu().numpy()
        for i in range(len(images)):
            axes[0][i].imshow(originals[i])
            axes[0][i].axis("off")
            axes[0][i].set_title(f"image {i}", fontsize=8)
            ax = axes[1][i]
            canvas = torch.ones(size, size, 3).numpy()
            for j in range(2):
                top, left = corners[i, j].tolist()
                canvas[top : top + side, left : left + side] = pictures[i, j]
            ax.imshow(canvas)
            guess = NEIGHBOURS[int(predicted[i])]
            cell = self.grid.cell
            right = bool(predicted[i] == labels[i])
            colour = "green" if right else "red"
            corner = ((guess % GRID) * cell, (guess // GRID) * cell)
            ax.add_patch(Rectangle(corner, cell - 1, cell - 1, fill=False, color=colour, lw=2))
            truth = POSITION_NAMES[NEIGHBOURS[int(labels[i])]]
            ax.set_title(f"true {truth}\npred {POSITION_NAMES[guess]}", fontsize=8, color=colour)
            ax.axis("off")
        return fig
