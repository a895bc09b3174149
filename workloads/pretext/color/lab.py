"""CIE Lab colour for the colour pretext tasks (colorization, split-brain autoencoder).

Zhang et al. ("Colorful Image Colorization", ECCV 2016; "Split-Brain Autoencoders", CVPR 2017)
split an image into lightness L (0..100) and colour ab (about -110..110) because Lab separates
them perceptually: a network that sees L sees the grayscale image, and ab is what it has to guess.

- ``rgb_to_lab`` / ``lab_to_rgb``: kornia's sRGB (D65) conversions, always in float32 with
  autocast off (kornia's matrices would otherwise run in bf16 and the round trip would drift).
- ``scale_l`` / ``scale_ab`` (and their inverses): what networks see and regress, about [-1, 1]:
  ``L / 50 - 1`` and ``ab / 110``.
- ``ABQuantizer``: the ab plane cut into square bins of side ``bin_size`` centred on multiples of
  it, keeping only the bins sRGB colours reach (found by converting a dense, fixed RGB grid, so
  deterministic): 261 bins at size 10 (Zhang et al. report 313 from their own gamut estimate).
  It encodes ab to the nearest bin (hard) or to its 5 nearest bins weighted by a Gaussian of
  sigma 5 (Zhang's soft encoding), and decodes class probabilities by the annealed mean.
- ``quantize_l`` / ``l_bin_centers``: L cut into equal bins (split-brain's ab -> L classification).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from kornia.color import lab_to_rgb as _lab_to_rgb
from kornia.color import rgb_to_lab as _rgb_to_lab
from torch import nn

from workloads.pretext.base import to_unit

L_MAX = 100.0
AB_SCALE = 110.0  # |a|, |b| of sRGB colours stay below ~108


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] [B, 3, H, W] -> Lab float32 (L in 0..100, ab about -110..110)."""
    with torch.autocast(rgb.device.type, enabled=False):
        return _rgb_to_lab(rgb.float().clamp(0.0, 1.0))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab [B, 3, H, W] -> RGB in [0, 1] (out-of-gamut colours clipped)."""
    with torch.autocast(lab.device.type, enabled=False):
        return _lab_to_rgb(lab.float(), clip=True)


def normalized_to_lab(images: torch.Tensor) -> torch.Tensor:
    """Normalised RGB (what encoders are fed) -> Lab float32."""
    return rgb_to_lab(to_unit(images.float()))


def split_lab(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lab [B, 3, H, W] -> (L [B, 1, H, W], ab [B, 2, H, W])."""
    return lab[:, :1], lab[:, 1:]


def scale_l(l: torch.Tensor) -> torch.Tensor:
    return l / (L_MAX / 2) - 1.0


def unscale_l(l_scaled: torch.Tensor) -> torch.Tensor:
    return (l_scaled + 1.0) * (L_MAX / 2)


def scale_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_SCALE


def unscale_ab(ab_scaled: torch.Tensor) -> torch.Tensor:
    return ab_scaled * AB_SCALE


def quantize_l(l: torch.Tensor, bins: int) -> torch.Tensor:
    """L [B, 1, H, W] in 0..100 -> bin index [B, H, W] of ``bins`` equal bins."""
    return (l[:, 0] / L_MAX * bins).floor().long().clamp_(0, bins - 1)


def l_bin_centers(bins: int) -> torch.Tensor:
    return (torch.arange(bins, dtype=torch.float32) + 0.5) * (L_MAX / bins)


@lru_cache(maxsize=8)
def _ab_gamut(bin_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(centers [Q, 2], lut [G, G] grid cell -> nearest in-gamut bin, k0: grid index of a, b = 0)."""
    axis = torch.linspace(0.0, 1.0, 64)
    rgb = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0]
    k0 = int(-(-128 // bin_size))  # grid index k covers a (or b) = (k - k0) * bin_size
    size = 2 * k0 + 1
    cells = (ab / bin_size).round().long() + k0  # [2, N]
    flat = torch.unique(cells[0] * size + cells[1])
    ka, kb = flat // size, flat % size
    centers = torch.stack([ka - k0, kb - k0], dim=1).float() * bin_size
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).reshape(-1, 2)
    lut = torch.cdist((grid - k0).float() * bin_size, centers).argmin(dim=1).reshape(size, size)
    return centers, lut, k0


class ABQuantizer(nn.Module):
    """ab <-> the in-gamut bins of side ``bin_size``; a module so its tables follow ``.to(device)``."""

    def __init__(self, bin_size: int = 10, neighbours: int = 5, sigma: float = 5.0):
        super().__init__()
        centers, lut, k0 = _ab_gamut(int(bin_size))
        self.bin_size, self.k0, self.neighbours, self.sigma = int(bin_size), k0, neighbours, float(sigma)
        # Not persistent: derived from bin_size, so they stay out of checkpoints.
        self.register_buffer("centers", centers.clone(), persistent=False)  # clones: the cache stays untouched
        self.register_buffer("lut", lut.clone(), persistent=False)
        # in_gamut: grid cell -> its bin, or -1 where the cell is out of gamut
        in_gamut = torch.full_like(lut, -1)
        cells = (centers / bin_size).round().long() + k0
        in_gamut[cells[:, 0], cells[:, 1]] = torch.arange(len(centers))
        self.register_buffer("in_gamut", in_gamut, persistent=False)

    @property
    def num_bins(self) -> int:
        return len(self.centers)

    def _cells(self, ab: torch.Tensor) -> torch.Tensor:
        return ((ab.float() / self.bin_size).round().long() + self.k0).clamp_(0, self.lut.shape[0] - 1)

    def encode_hard(self, ab: torch.Tensor) -> torch.Tensor:
        """ab [B, 2, H, W] -> index of the nearest in-gamut bin [B, H, W]."""
        cells = self._cells(ab)
        return self.lut[cells[:, 0], cells[:, 1]]

    def encode_soft(self, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ab [B, 2, H, W] -> (bins [B, K, H, W], weights [B, K, H, W] summing to 1), K = neighbours.

        The candidates are the 3x3 grid cells around the nearest cell (those in gamut) plus the
        nearest in-gamut bin, so the K nearest come without a distance to every bin.
        """
        ab = ab.float()
        cells = self._cells(ab)
        offsets = torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], device=ab.device)
        cand = (cells.unsqueeze(1) + offsets.view(1, 9, 2, 1, 1)).clamp_(0, self.lut.shape[0] - 1)  # [B,9,2,H,W]
        bins = self.in_gamut[cand[:, :, 0], cand[:, :, 1]]  # [B, 9, H, W], -1 outside the gamut
        nearest = self.lut[cells[:, 0], cells[:, 1]].unsqueeze(1)
        # Add the nearest bin as a 10th candidate only when the centre cell is out of gamut (no duplicate).
        bins = torch.cat([bins, torch.where(bins[:, 4:5] < 0, nearest, torch.full_like(nearest, -1))], dim=1)
        dist2 = (self.centers[bins.clamp(min=0)].permute(0, 1, 4, 2, 3) - ab.unsqueeze(1)).square().sum(2)
        dist2 = dist2.masked_fill(bins < 0, float("inf"))
        dist2, pick = dist2.topk(self.neighbours, dim=1, largest=False)
        weights = torch.softmax(-dist2 / (2 * self.sigma**2), dim=1)  # inf distances get weight 0
        return bins.gather(1, pick).clamp(min=0), weights

    def annealed_mean(self, logits: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
        """logits [B, Q, H, W] -> ab [B, 2, H, W]: the mean of softmax(logits / T) over bin centres.

        T = 1 is the mean (desaturated), T -> 0 the mode (patchy); Zhang et al. use T = 0.38.
        """
        with torch.autocast(logits.device.type, enabled=False):  # einsum would run in bf16 under autocast
            probs = torch.softmax(logits.float() / temperature, dim=1)
            return torch.einsum("bqhw,qc->bchw", probs, self.centers)
