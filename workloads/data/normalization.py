"""Per-channel normalisation of images, measured on the training split of the data.

    norm = Normalization.of_images(train.images)   # uint8 [N, C, H, W] -> per-channel mean and std on [0, 1]
    x = norm.normalize(images_in_unit_range)        # (x - mean) / std, what encoders are fed
    unit = norm.to_unit(x)                          # back to [0, 1] (clamped)

A run computes its normalisation once, at load, from the training split (never from val or test),
records it as params (`data_mean`, `data_std`), uses it for the augmentation and for feature
extraction, and stores it in encoder.pt, so `sslab eval` feeds a saved encoder exactly what it was
trained on.

Code that works on normalised images without being handed the numbers (the pretext tasks'
helpers, the Lab-colour encoders) reads the *active* normalisation: `using_normalization(norm)`
sets it for a block (a pretext task activates its own while it runs; feature extraction activates
the one it normalises with). Outside any such block it is `CIFAR10`, the constants every data set
used before this was measured: only encoders and tasks made before that (or tests of them) rely on it.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch

__all__ = ["CIFAR10", "Normalization", "active_normalization", "using_normalization"]

DIGITS = 6  # stats are rounded once, so params, training, evaluation and the checkpoint hold the same numbers


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation of images on the [0, 1] scale."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
        except (TypeError, ValueError):
            raise ValueError(f"mean and std must be sequences of numbers, got {self.mean!r} and {self.std!r}") from None
        if not mean or len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel (the same length >= 1), got {mean} and {std}")
        if not all(s > 0 for s in std):
            raise ValueError(f"std must be > 0 for every channel, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def of_images(cls, images_uint8: torch.Tensor, chunk: int = 4096) -> "Normalization":
        """The per-channel mean and (population) standard deviation of all pixels of uint8 images
        [N, C, H, W], on the [0, 1] scale, summed in float64 (exact for any realistic data set)."""
        if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got "
                             f"{getattr(images_uint8, 'dtype', type(images_uint8).__name__)} "
                             f"{tuple(getattr(images_uint8, 'shape', ()))}")
        if images_uint8.shape[0] == 0:
            raise ValueError("cannot measure the normalisation of an empty data set")
        channels = images_uint8.shape[1]
        total = torch.zeros(channels, dtype=torch.float64)
        squares = torch.zeros(channels, dtype=torch.float64)
        for start in range(0, images_uint8.shape[0], chunk):
            x = images_uint8[start : start + chunk].to("cpu", torch.float64).transpose(0, 1).reshape(channels, -1)
            total += x.sum(dim=1)
            squares += x.square().sum(dim=1)
        count = images_uint8.shape[0] * images_uint8.shape[2] * images_uint8.shape[3]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std) * 255.0)  # a constant channel: scaled only, not divided by 0
        return cls(tuple(round(v / 255.0, DIGITS) for v in mean.tolist()),
                   tuple(round(v / 255.0, DIGITS) for v in std.tolist()))

    @classmethod
    def from_dict(cls, value: dict) -> "Normalization":
        return cls(tuple(value["mean"]), tuple(value["std"]))

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def params(self) -> dict[str, str]:
        """As recorded on a run: data_mean, data_std (comma-separated, channel order)."""
        return {"data_mean": ",".join(repr(v) for v in self.mean), "data_std": ",".join(repr(v) for v in self.std)}

    def _shaped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() < 3 or x.shape[-3] != len(self.mean):
            raise ValueError(f"images must be [..., {len(self.mean)}, H, W] (one channel per mean/std value), "
                             f"got shape {tuple(x.shape)}")
        view = (len(self.mean), 1, 1)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return (torch.tensor(self.mean, dtype=dtype).view(view).to(x.device, non_blocking=True),
                torch.tensor(self.std, dtype=dtype).view(view).to(x.device, non_blocking=True))

    def normalize(self, unit: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> (x - mean) / std."""
        mean, std = self._shaped(unit)
        return (unit - mean) / std

    def to_unit(self, normalized: torch.Tensor) -> torch.Tensor:
        """Normalised images -> [0, 1] (clamped)."""
        mean, std = self._shaped(normalized)
        return (normalized * std + mean).clamp(0.0, 1.0)


# The CIFAR-10 training set's statistics: what every data set was normalised with before the
# normalisation was measured from the data. Kept for checkpoints written then, for the pretext helpers
# used on their own (no task, no active normalisation) and for benchmarks that compare with torchvision.
CIFAR10 = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

_ACTIVE: contextvars.ContextVar[Normalization] = contextvars.ContextVar("sslab_normalization", default=CIFAR10)


def active_normalization() -> Normalization:
    """The normalisation set by the innermost `using_normalization` block (CIFAR10 outside any)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def using_normalization(normalization: Normalization | None) -> Iterator[Normalization]:
    """Make `normalization` the active one inside the block (None: leave the active one as it is)."""
    if normalization is None:
        yield _ACTIVE.get()
        return
    if not isinstance(normalization, Normalization):
        raise TypeError(f"expected a Normalization, got {type(normalization).__name__}")
    token = _ACTIVE.set(normalization)
    try:
        yield normalization
    finally:
        _ACTIVE.reset(token)

