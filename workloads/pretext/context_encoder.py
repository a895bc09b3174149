"""Context encoder: inpaint a masked region from its surroundings (Pathak et al., CVPR 2016).

A square covering ``mask_fraction`` of the image area is filled with the data-set mean colour
(0 in normalised units, as Pathak et al. fill the hole with the mean); the encoder sees the masked
image, an ``ImageDecoder`` predicts the whole image from the pooled features (the paper's
channel-wise fully connected bottleneck lets every output pixel depend on all the context), and
the loss is the mean squared error over the masked pixels (metric "mse_masked"): the encoder must
understand the scene to fill the hole, and gains nothing from compressing the visible pixels.

``context_weight`` (default 0.0) adds that weight times the error on the visible pixels; 0
follows the paper, whose decoder predicts only the hole, so no capacity goes to copying pixels
the input already shows (the paper's extra weight on a thin overlap border is left out). The
adversarial loss of the paper served sharper inpainting, not the features, and is left out too.

Masks (``mask``): ``"center"``, the central square (the paper's main setting), or ``"random"``,
a square of the same size at a random position per image (drawn from torch's global CPU
generator, as workloads/augment.py does, so ``torch.manual_seed`` reproduces them on any device).
The side is round(sqrt(mask_fraction * H * W)), at most min(H, W).
"""
from __future__ import annotations

import math

import torch

from workloads.pretext.base import PretextStep, PretextTask, to_unit
from workloads.pretext.checks import check_choice, check_range
from workloads.pretext.decoder import ImageDecoder, image_rows_figure

MASKS = ("center", "random")


def square_masks(batch: int, height: int, width: int, fraction: float, mode: str = "center",
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [batch, 1, height, width], True inside a square of area ~ fraction * height * width."""
    check_choice("mask", mode, MASKS)
    side = max(1, min(round(math.sqrt(fraction * height * width)), height, width))
    if mode == "center":
        top = torch.full((batch,), (height - side) // 2)
        left = torch.full((batch,), (width - side) // 2)
    else:
        top = torch.randint(0, height - side + 1, (batch,))
        left = torch.randint(0, width - side + 1, (batch,))
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + side).view(-1, 1, 1))
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + side).view(-1, 1, 1))
    return (inside_rows & inside_cols).unsqueeze(1).to(device)


class ContextEncoder(PretextTask):
    def __init__(self, encoder, feature_dim: int, *, mask: str = "center", mask_fraction: float = 0.25,
                 context_weight: float = 0.0, decoder_width: int = 64):
        super().__init__(encoder)
        self.mask = check_choice("mask", mask, MASKS)
        self.mask_fraction = float(check_range("mask_fraction", mask_fraction, 0.0, 1.0, open_low=True, open_high=True))
        self.context_weight = float(check_range("context_weight", context_weight, 0.0, 1.0))
        check_range("decoder_width", decoder_width, 1, 1024, integer=True)
        self.decoder = ImageDecoder(feature_dim, 3, width=decoder_width)

    def _inpaint(self, images: torch.Tensor):
        b, _, h, w = images.shape
        masks = square_masks(b, h, w, self.mask_fraction, self.mask, images.device)
        masked = images.masked_fill(masks, 0.0)  # 0 = the data-set mean after normalisation
        recon = self.decoder(self.encoder(masked), out_size=(h, w)).float()
        return masks, masked, recon

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        masks, _, recon = self._inpaint(images)
        err = (recon - images.float()).square()
        hole = masks.float()
        mse_masked = (err * hole).sum() / (hole.sum() * images.shape[1])
        mse_context = (err * (1 - hole)).sum() / ((1 - hole).sum() * images.shape[1]).clamp(min=1)
        loss = mse_masked + self.context_weight * mse_context
        return PretextStep(loss, {"mse_masked": mse_masked.detach(), "mse_context": mse_context.detach()})

    @torch.no_grad()
    def figure(self, images: torch.Tensor):
        with self.evaluating():
            images = images[:8]
            masks, masked, recon = self._inpaint(images)
            filled = torch.where(masks, recon, images.float())  # the prediction pasted into the hole
            return image_rows_figure([(f"masked input ({self.mask}, {self.mask_fraction:.0%} of the area)", to_unit(masked)),
                                      ("inpainted (prediction in the hole)", to_unit(filled)), ("original", to_unit(images))])
