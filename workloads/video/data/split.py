"""Split clips by source: every clip of one video lands on the same side.

Clips cut from one video share its scene, objects and lighting; a video on both sides of a split
would let a model score on validation what it memorised in training. So whole sources are dealt out:
the sorted source names are permuted by a generator seeded with `seed`, the first n_val go to val,
the next n_test to test, the rest to train (n_val = round(n * val_fraction), at least 1 where the
fraction is above 0; likewise test; train keeps at least 1). Synthetic clips are each their own source.
"""
from __future__ import annotations

import torch

from workloads.data.errors import DataError
from workloads.video.dataset import VideoDataset

KEYS = ("data.val_fraction", "data.test_fraction")


def split_by_source(dataset: VideoDataset, val_fraction: float, test_fraction: float, seed: int,
                    ) -> tuple[VideoDataset, VideoDataset, VideoDataset]:
    """(train, val, test); a side whose fraction is 0 is empty. DataError names the data.* settings when
    the fractions are invalid or there are too few sources for the sides asked for."""
    train, val, test = source_split_indices(dataset.sources, val_fraction, test_fraction, seed)
    return dataset.subset(train), dataset.subset(val), dataset.subset(test)


def source_split_indices(sources: list[str], val_fraction: float, test_fraction: float, seed: int,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) sorted clip indices (int64), whole sources per side (see the module docstring)."""
    for key, fraction in zip(KEYS, (val_fraction, test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise DataError(f"{key} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"{KEYS[0]} ({val_fraction}) + {KEYS[1]} ({test_fraction}) must be below 1: "
                        "the rest of the videos are the training split")
    names = sorted(set(sources))
    n = len(names)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if n < needed:
        asked = " and ".join(f"{k} {f}" for k, f in zip(KEYS, (val_fraction, test_fraction)) if f > 0)
        raise DataError(f"{asked} need at least {needed} sources (videos or frame folders; one for each side, as all "
                        f"clips of a video stay on one side), the data has {n}: {names[:5]}; set the fraction to 0 "
                        "or add videos")
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    while n_val + n_test > n - 1:  # rounding up both may leave no training source: take from the larger side
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    side = {}
    for rank, position in enumerate(order):
        side[names[position]] = 1 if rank < n_val else 2 if rank < n_val + n_test else 0
    sides = torch.tensor([side[s] for s in sources], dtype=torch.int64)
    return tuple(torch.nonzero(sides == k).flatten() for k in range(3))
