"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles", ECCV 2016).

Each image is cut into the 9 tiles of a 3x3 grid (workloads/pretext/patches.py), the tiles are
shuffled by a permutation drawn from a fixed set of P, each tile goes through the shared encoder
on its own (the paper's context-free network: no tile sees another), the 9 features are
concatenated in shuffled order and an MLP head predicts which of the P permutations was applied.
Chance is 1/P.

Layout: slot i of the shuffled puzzle holds the tile from grid position ``perm[i]``
(``shuffled = tiles[:, perm]``), and the label is the permutation's index in the set; hence
``shuffled[:, perm.argsort()]`` restores the grid order.

Details that make it work (from the paper):
- The permutation set is chosen once, for large Hamming distances between its members, so that no
  two puzzles differ by a swap or two of similar-looking tiles: the paper finds that a set whose
  members lie farther apart makes a harder puzzle and a better representation. The paper's greedy
  algorithm 1 starts from a random permutation and repeatedly adds the one with the largest total
  Hamming distance to those chosen. That alone can add a permutation close to one chosen; here
  the greedy choice maximises the *minimum* distance to the chosen set (farthest-point selection)
  and breaks ties by the paper's total distance, so the set keeps a high average distance and gets
  a guaranteed minimum: the set's minimum pairwise distance is the distance of the last addition,
  and every permutation left out lies within that distance of the set. Deterministic given
  ``permutation_seed`` (the seed picks the first permutation; ties go to the lexicographically
  first permutation). Measured with seed 0: P=100 has minimum distance 6 (the total-distance rule
  alone: 2) and P=1000 has 5 (alone: 2), at the same average distance (8.08 and 8.01).
- Shortcuts: a random gap between tiles (gap plus jitter), each tile normalised to its own mean
  and standard deviation, and 30% of the images in grayscale against chromatic aberration.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
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
from workloads.pretext.patches.grid import GRID, PatchGrid, check_int

TILES = GRID * GRID


def maximal_hamming_permutations(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy maximal-Hamming-distance permutation set (see the module docstring).

    -> (permutations long [size, 9], distances long [size]: each one's minimum Hamming distance to
    those chosen before it; distances[0] = 9 by convention). distances never increase, so
    distances[-1] is the set's minimum pairwise distance. Cached; P=1000 takes a few seconds.
    """
    check_int("permutations", size, 2, 1000)
    check_int("permutation_seed", seed, 0)
    permutations, distances = _greedy_permutations(size, seed)
    return permutations.clone(), distances.clone()  # callers may not write into the cache


@functools.lru_cache(maxsize=8)
def _greedy_permutations(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # NumPy, single-threaded: on a busy CPU it runs these 9!-long vector ops far faster than torch's thread pool.
    everything = np.array(list(itertools.permutations(range(TILES))), dtype=np.uint8)  # 9! x 9, lexicographic
    # has[9 * i + v, k]: permutation k puts v at position i. Matches with p: the sum of 9 of these rows.
    has = (everything.T[:, None, :] == np.arange(TILES, dtype=np.uint8)[None, :, None]).reshape(TILES * TILES, -1)
    has = has.astype(np.uint8)
    rows = np.arange(TILES) * TILES
    generator = torch.Generator().manual_seed(seed)
    pick = int(torch.randint(len(everything), (1,), generator=generator))
    nearest = np.full(len(everything), TILES, dtype=np.uint8)  # min distance to the chosen set
    total = np.zeros(len(everything), dtype=np.int16)  # the paper's criterion, as tie-break (<= 9000)
    chosen, distances = [], []
    for _ in range(size):
        chosen.append(pick)
        distances.append(int(nearest[pick]))
        distance = TILES - has[rows + everything[pick]].sum(axis=0, dtype=np.uint8)
        np.minimum(nearest, distance, out=nearest)  # chosen ones drop to 0 and are never picked again
        total += distance
        # Farthest first, then the largest total; argmax takes the first (lexicographic) of equals.
        pick = int(np.where(nearest == nearest.max(), total, -1).argmax())
    return torch.from_numpy(everything[chosen].astype(np.int64)), torch.tensor(distances)


def shuffle_tiles(tiles: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """tiles [B, 9, ...] in grid order, permutations long [B, 9] -> shuffled[b, i] = tiles[b, perm[b, i]]."""
    index = permutations.view(*permutations.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return tiles.gather(1, index)


class Jigsaw(PretextTask):
    """P-way classification of the permutation that shuffled an image's 9 tiles.

    permutations: size P of the permutation set, integer in [2, 1000]. permutation_seed: integer
    >= 0, picks the set's first permutation. grayscale_p: probability in [0, 1] that an image's
    tiles are grey. normalize_tiles: each tile to zero mean, unit std. hidden: width of the head's
    hidden layer (base.classifier_head), 0 for a linear head; integer >= 0.
    grid: PatchGrid's grid_size, gap, jitter, downsample_p, color_drop_p (its defaults).
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, *, permutations: int = 100, permutation_seed: int = 0,
                 grayscale_p: float = 0.3, normalize_tiles: bool = True, hidden: int = 256, **grid):
        super().__init__(encoder)
        self.grid = PatchGrid(grayscale_p=grayscale_p, normalize_patches=normalize_tiles, **grid)
        self.hidden = check_int("hidden", hidden, 0)
        self.chance = 1.0 / permutations
        # A buffer: checkpoints carry the set the head's classes refer to.
        self.register_buffer("permutation_set", maximal_hamming_permutations(permutations, permutation_seed)[0])
        features = TILES * feature_dim
        self.head = classifier_head(features, permutations, hidden) if hidden else nn.Linear(features, permutations)

    def extra_repr(self) -> str:
        return f"permutations={len(self.permutation_set)}, {self.grid!r}"

    def puzzles(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (shuffled tiles [B, 9, 3, S, S], labels long [B]: indices into permutation_set)."""
        batch = images.shape[0]
        labels = torch.randint(0, len(self.permutation_set), (batch,)).to(images.device)
        tiles, _ = self.grid(images, torch.arange(TILES).expand(batch, TILES))
        return shuffle_tiles(tiles, self.permutation_set[labels]), labels

    def logits(self, shuffled: torch.Tensor) -> torch.Tensor:
        features = self.encoder(shuffled.flatten(0, 1))  # every tile on its own, one batch
        return self.head(features.view(shuffled.shape[0], -1)).float()  # float32 loss under autocast

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        shuffled, labels = self.puzzles(images)
        logits = self.logits(shuffled)
        return PretextStep(F.cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels)})

    @torch.no_grad()
    def figure(self, images: torch.Tensor, count: int = 6) -> Figure:
        """Each image, its shuffled tiles (the input, with the true and predicted permutation index)
        and the tiles put back by the predicted permutation (the image again when right)."""
        with self.evaluating():  # BatchNorm running statistics, not the few figure images'
            with torch.random.fork_rng(devices=[]):  # same puzzles every epoch; training's RNG untouched
                torch.manual_seed(0)
                images = images[:count]
                shuffled, labels = self.puzzles(images)
            predicted = self.logits(shuffled).argmax(dim=1)
        restored = shuffle_tiles(shuffled, self.permutation_set[predicted].argsort(dim=1))
        fig = Figure(figsize=(2.0 * len(images), 6.6), layout="constrained")
        fig.suptitle("Jigsaw: image; shuffled tiles as the encoder sees them; tiles put back by the prediction")
        axes = fig.subplots(3, len(images), squeeze=False)
        originals = to_unit(images.float()).permute(0, 2, 3, 1).cpu().numpy()
        for i in range(len(images)):
            right = bool(predicted[i] == labels[i])
            colour = "green" if right else "red"
            axes[0][i].imshow(originals[i])
            axes[0][i].set_title(f"image {i}", fontsize=8)
            axes[1][i].imshow(_mosaic(shuffled[i]))
            axes[1][i].set_title(f"true #{int(labels[i])} / pred #{int(predicted[i])}", fontsize=8, color=colour)
            axes[2][i].imshow(_mosaic(restored[i]))
            axes[2][i].set_title("put back by pred", fontsize=8, color=colour)
            for row in range(3):
                axes[row][i].axis("off")
        return fig


def _mosaic(tiles: torch.Tensor, pad: int = 2):
    """9 tiles [9, 3, S, S] -> an RGB array of the 3x3 layout with white gutters."""
    side = tiles.shape[-1]
    step = side + pad
    canvas = torch.ones(3, GRID * step - pad, GRID * step - pad)
    pictures = to_unit(tiles.float()).cpu()
    for slot in range(TILES):
        top, left = (slot // GRID) * step, (slot % GRID) * step
        canvas[:, top : top + side, left : left + side] = pictures[slot]
    return canvas.permute(1, 2, 0).numpy()
