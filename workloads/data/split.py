"""Deterministic stratified splits: train / val, or train / val / test.

Per class, a permutation drawn from a generator seeded with `seed` (classes in label order, one
generator for all): its first round(n * val_fraction) members go to val, the next
round(n * test_fraction) to test, the rest to train. With test_fraction 0 the train and val sides are
exactly those of the two-way split, so a run's validation split does not move when a test split is
added elsewhere.
"""
import math

import torch

from workloads.data.errors import DataError


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified split: per class, a seeded permutation; the first round(n*f) go to val."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val, _ = _split(labels, val_fraction, 0.0, seed)
    return train, val


def split_three_ways(labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int,
                     classes: list[str] | None = None, keys: tuple[str, str] = ("val_fraction", "test_fraction"),
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) sorted indices, stratified and seeded (see the module docstring).

    Every class must keep at least one image in train, and in val and test where their fraction is
    above 0: otherwise a DataError names `keys` (the settings the fractions come from), the class and
    what would be valid. classes: the class names, for the message.
    """
    for key, fraction in zip(keys, (val_fraction, test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise DataError(f"{key} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"{keys[0]} ({val_fraction}) + {keys[1]} ({test_fraction}) must be below 1: "
                        "the rest of the images are the training split")
    check_class_sizes(labels, val_fraction, test_fraction, classes, keys)
    return _split(labels, val_fraction, test_fraction, seed)


def check_class_sizes(labels: torch.Tensor, val_fraction: float, test_fraction: float,
                      classes: list[str] | None = None, keys: tuple[str, str] = ("val_fraction", "test_fraction")) -> None:
    """DataError unless every class gets >= 1 training image, and >= 1 val (test) image when
    val_fraction (test_fraction) is above 0."""
    values, counts = torch.unique(torch.as_tensor(labels), sorted=True, return_counts=True)
    for label, n in zip(values.tolist(), counts.tolist()):
        n_val, n_test = round(n * val_fraction), round(n * test_fraction)
        n_train = n - n_val - n_test
        if n_train >= 1 and (n_val >= 1 or val_fraction == 0) and (n_test >= 1 or test_fraction == 0):
            continue
        name = classes[label] if classes and 0 <= label < len(classes) else str(label)
        smallest = int(counts.min())
        needed = [f"each above {0.5 / smallest:.3g}" if smallest > 1 else "impossible: a class of 1 image cannot be split"]
        if smallest > 1:
            needed.append(f"together at most {(smallest - 1) / smallest:.3g}")
        minimum = max(math.floor(0.5 / f) + 1 for f in (val_fraction, test_fraction) if f > 0) if (
            val_fraction > 0 or test_fraction > 0) else 1
        raise DataError(
            f"{keys[0]} {val_fraction} and {keys[1]} {test_fraction} leave class {name!r} ({n} images) with "
            f"{n_train} training, {n_val} validation and {n_test} test images; every class needs at least one in "
            f"each split. The smallest class has {smallest} images: valid fractions are {' and '.join(needed)} "
            f"(or use classes of at least {minimum} images at these fractions)")


def _split(labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    train, val, test = [], [], []
    for label in torch.unique(labels, sorted=True):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val, n_test = round(len(members) * val_fraction), round(len(members) * test_fraction)
        val.append(members[:n_val])
        test.append(members[n_val : n_val + n_test])
        train.append(members[n_val + n_test :])
    return tuple(torch.sort(torch.cat(part)).values for part in (train, val, test))
