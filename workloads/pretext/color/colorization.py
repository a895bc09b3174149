"""Colorization: predict the ab channels of Lab from the lightness L (Zhang et al., ECCV 2016).

The encoder (a ``GrayEncoder``: its backbone sees only ``L / 50 - 1``) pools the image to a
feature vector; an ``ImageDecoder`` turns it back into a per-pixel prediction of colour. Two modes:

- ``"classification"`` (the paper's): ab is quantised into the in-gamut bins of side ``bin_size``
  (261 at 10) and the loss is a per-pixel cross-entropy. Colour is multimodal (a shirt may be red or
  blue), and regression averages the modes into grey; a distribution over bins does not.
  - Soft encoding: the target is the 5 nearest bins weighted by a Gaussian (sigma 5), not one bin.
  - Class rebalancing: most pixels are near-grey (sky, walls, background), so each pixel's loss is
    weighted by w(q) proportional to ((1 - lambda) p~(q) + lambda / Q)^-1, q its nearest bin, p~ the
    empirical bin prior smoothed by a Gaussian (sigma 5) on the ab plane, lambda = 0.5, scaled so
    that E_p~[w] = 1. The prior is either given (``prior``) or a running mean of the batches' bin
    histograms (a buffer, so it is checkpointed; the mean over the last ~1000 batches at most).
    ``rebalance_lambda=1`` turns rebalancing off.
  - Prediction at 1/``output_stride`` of the image resolution (default 4, as in the paper; the ab
    target is area-downsampled to it): colour varies slowly, and the per-pixel softmax over Q bins
    is the costly part. The figure upsamples the predicted ab bilinearly onto the full-resolution L.
  - Decoding for display and ``mse_ab``: the annealed mean, softmax(logits / T) averaged over the
    bin centres, T = 0.38: between the mean (T = 1, desaturated) and the mode (T -> 0, patchy).
  Metrics: "accuracy" (the pixels whose top bin is their nearest bin; guessing the most common,
  near-grey bin already scores ~30% on the CIFAR-10 sample, far above ``chance`` = 1 / Q), "mse_ab".
- ``"regression"``: L2 on ab / 110; metric "mse_ab" (the same scale in both modes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.pretext.base import PretextStep, PretextTask, to_unit
from workloads.pretext.checks import check_choice, check_range
from workloads.pretext.color.encoders import GrayEncoder
from workloads.pretext.color.lab import (
    ABQuantizer,
    lab_to_rgb,
    normalized_to_lab,
    scale_ab,
    scale_l,
    split_lab,
    unscale_ab,
)
from workloads.pretext.decoder import ImageDecoder, image_rows_figure

MODES = ("classification", "regression")
_PRIOR_WINDOW = 1000  # the running prior averages over at most this many recent batches


class Colorization(PretextTask):
    def __init__(self, encoder: GrayEncoder, feature_dim: int, *, mode: str = "classification", bin_size: int = 10,
                 temperature: float = 0.38, rebalance_lambda: float = 0.5, rebalance_sigma: float = 5.0,
                 soft_encoding: bool = True, prior: torch.Tensor | None = None, output_stride: int = 4,
                 decoder_width: int = 64):
        super().__init__(encoder)
        if not isinstance(encoder, GrayEncoder):
            raise TypeError("Colorization needs a GrayEncoder (build_encoder(..., wrapper='gray')): its network must see only L")
        self.mode = check_choice("mode", mode, MODES)
        self.temperature = check_range("temperature", temperature, 0.0, 1.0, open_low=True)
        check_range("rebalance_lambda", rebalance_lambda, 0.0, 1.0)
        check_range("rebalance_sigma", rebalance_sigma, 0.0, 50.0, open_low=True)
        check_range("bin_size", bin_size, 2, 50, integer=True)
        check_range("decoder_width", decoder_width, 1, 1024, integer=True)
        self.output_stride = check_choice("output_stride", output_stride, (1, 2, 4))
        if not isinstance(soft_encoding, bool):
            raise ValueError(f"soft_encoding must be true or false, got {soft_encoding!r}")
        self.soft_encoding = soft_encoding
        self.quantizer = ABQuantizer(bin_size)
        q = self.quantizer.num_bins
        if mode == "classification":
            self.chance = 1.0 / q
        self.decoder = ImageDecoder(feature_dim, q if mode == "classification" else 2, size=32 // output_stride,
                                    width=decoder_width)
        self.rebalance_lambda = float(rebalance_lambda)
        centers = self.quantizer.centers
        kernel = torch.exp(-torch.cdist(centers, centers).square() / (2 * rebalance_sigma**2))
        # Rows normalised: each bin's smoothed prior is a Gaussian-weighted average of its neighbours',
        # so a flat prior stays flat (bins at the gamut's edge, with fewer neighbours, are not penalised).
        self.register_buffer("smoothing", kernel / kernel.sum(1, keepdim=True), persistent=False)
        self.learn_prior = prior is None
        if prior is None:
            prior = torch.full((q,), 1.0 / q)
        else:
            prior = torch.as_tensor(prior, dtype=torch.float32).flatten()
            if len(prior) != q or (prior < 0).any() or prior.sum() <= 0:
                raise ValueError(f"prior must hold {q} non-negative numbers (one per ab bin at bin_size {bin_size}), "
                                 "with a positive sum")
            prior = prior / prior.sum()
        self.register_buffer("prior", prior.clone())
        self.register_buffer("prior_batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update_prior(self, bins: torch.Tensor) -> None:
        hist = torch.bincount(bins.flatten(), minlength=len(self.prior)).float()
        n = torch.clamp(self.prior_batches + 1, max=_PRIOR_WINDOW)
        self.prior += (hist / hist.sum() - self.prior) / n
        self.prior_batches += 1

    @torch.no_grad()
    def class_weights(self) -> torch.Tensor:
        """w [Q]: the rebalancing weight of each bin, from the current prior."""
        with torch.autocast(self.prior.device.type, enabled=False):  # keep the matmul in float32
            smooth = self.smoothing @ self.prior
            smooth = smooth / smooth.sum()
            w = 1.0 / ((1 - self.rebalance_lambda) * smooth + self.rebalance_lambda / len(smooth))
            return w / (smooth * w).sum()

    def _predict(self, images: torch.Tensor):
        """-> (L [B, 1, H, W], ab at the output resolution [B, 2, h, w], decoder output [B, Q or 2, h, w])."""
        l, ab = split_lab(normalized_to_lab(images))
        size = (images.shape[-2] // self.output_stride, images.shape[-1] // self.output_stride)
        out = self.decoder(self.encoder.backbone(scale_l(l)), out_size=size).float()
        return l, F.interpolate(ab, size=size, mode="area"), out

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        l, ab, out = self._predict(images)
        if self.mode == "regression":
            loss = F.mse_loss(out, scale_ab(ab))
            return PretextStep(loss, {"mse_ab": loss.detach()})
        hard = self.quantizer.encode_hard(ab)
        if self.training and self.learn_prior:
            self._update_prior(hard)
        logp = F.log_softmax(out, dim=1)
        if self.soft_encoding:
            bins, weights = self.quantizer.encode_soft(ab)
            nll = -(logp.gather(1, bins) * weights).sum(1)
        else:
            nll = -logp.gather(1, hard.unsqueeze(1)).squeeze(1)
        loss = (self.class_weights()[hard] * nll).mean()
        with torch.no_grad():
            pred_ab = self.quantizer.annealed_mean(out, self.temperature)
            metrics = {"accuracy": (out.argmax(1) == hard).float().mean(),
                       "mse_ab": F.mse_loss(scale_ab(pred_ab), scale_ab(ab))}
        return PretextStep(loss, metrics)

    @torch.no_grad()
    def figure(self, images: torch.Tensor):
        with self.evaluating():
            images = images[:8]
            l, ab, out = self._predict(images)
            pred_ab = self.quantizer.annealed_mean(out, self.temperature) if self.mode == "classification" else unscale_ab(out)
            pred_ab = F.interpolate(pred_ab, size=l.shape[-2:], mode="bilinear", align_corners=False)
            gray = lab_to_rgb(torch.cat([l, torch.zeros_like(pred_ab)], 1))
            how = f"annealed mean, T={self.temperature:g}" if self.mode == "classification" else "regression"
            rows = [("grayscale input (L)", gray),
                    (f"colourised ({how})", lab_to_rgb(torch.cat([l, pred_ab], 1))),
                    ("original", to_unit(images))]
            return image_rows_figure(rows)
