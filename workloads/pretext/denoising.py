"""Denoising autoencoder: reconstruct the clean image from a corrupted one (Vincent et al., ICML 2008).

A plain autoencoder can learn features that merely copy their input; corrupting the input and
asking for the clean image forces the encoder to capture the structure that lets the missing or
perturbed values be inferred from the rest. The encoder sees the corrupted normalised image, an
``ImageDecoder`` reconstructs the clean normalised image from the pooled features, and the loss
is the mean squared error over all pixels (metric "mse").

Corruptions (``noise``):
- ``"gaussian"``: additive N(0, noise_std^2) in normalised units, i.e. relative to each channel's
  data-set standard deviation (0.3 is about 0.075 in [0, 1] pixel units).
- ``"masking"``: Vincent's masking noise, a random ``mask_fraction`` of the pixels (all three
  channels of each) set to 0, which in normalised units is the data-set mean colour.
The noise is drawn on the images' device from torch's generator there (``torch.manual_seed``
reproduces it; a CPU and a CUDA run draw different noise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.pretext.base import PretextStep, PretextTask, to_unit
from workloads.pretext.checks import check_choice, check_range
from workloads.pretext.decoder import ImageDecoder, image_rows_figure

NOISES = ("gaussian", "masking")


class DenoisingAutoencoder(PretextTask):
    def __init__(self, encoder, feature_dim: int, *, noise: str = "gaussian", noise_std: float = 0.3,
                 mask_fraction: float = 0.25, decoder_width: int = 64):
        super().__init__(encoder)
        self.noise = check_choice("noise", noise, NOISES)
        self.noise_std = float(check_range("noise_std", noise_std, 0.0, 5.0, open_low=True))
        self.mask_fraction = float(check_range("mask_fraction", mask_fraction, 0.0, 1.0, open_low=True, open_high=True))
        check_range("decoder_width", decoder_width, 1, 1024, integer=True)
        self.decoder = ImageDecoder(feature_dim, 3, width=decoder_width)

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        if self.noise == "gaussian":
            return images + self.noise_std * torch.randn_like(images)
        keep = torch.rand(len(images), 1, *images.shape[-2:], device=images.device) >= self.mask_fraction
        return images * keep

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        recon = self.decoder(self.encoder(self.corrupt(images)), out_size=images.shape[-2:]).float()
        loss = F.mse_loss(recon, images.float())
        return PretextStep(loss, {"mse": loss.detach()})

    @torch.no_grad()
    def figure(self, images: torch.Tensor):
        with self.evaluating():
            images = images[:8]
            noisy = self.corrupt(images)
            recon = self.decoder(self.encoder(noisy), out_size=images.shape[-2:]).float()
            how = f"gaussian, std {self.noise_std:g}" if self.noise == "gaussian" else f"{self.mask_fraction:.0%} of pixels masked"
            label = f"noisy input ({how})"
            return image_rows_figure([(label, to_unit(noisy)), ("reconstruction", to_unit(recon)), ("original", to_unit(images))])
