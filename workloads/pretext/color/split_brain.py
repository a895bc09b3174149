"""Split-brain autoencoder: two halves each predict one channel subset from the other
(Zhang, Isola and Efros, CVPR 2017).

An autoencoder needs a bottleneck to avoid learning the identity, and the bottleneck costs
information. Splitting the network instead, into ``net_l`` that sees only L and predicts ab
(colorization) and ``net_ab`` that sees only ab and predicts L, turns reconstruction into two
cross-channel predictions neither half can solve by copying; the representation is both halves'
features concatenated, so it covers the whole input. Zhang et al. give each half half the
channels of the full network (here: the caller's ``build_encoder(..., wrapper="split_brain")``
kwargs). Each half is a backbone plus an ``ImageDecoder``; the loss is the sum of the two.

``mode``:
- ``"classification"`` (the paper's, which found it better than L2): ab as the nearest in-gamut
  bin of side ``ab_bin_size`` (261 at 10), L as one of ``l_bins`` equal bins (100 in the paper);
  plain cross-entropy, without colorization's class rebalancing or soft encoding.
- ``"regression"``: L2 on ab / 110 and on L / 50 - 1.
Both predictions are made at 1/``output_stride`` of the image resolution (default 4, as in
colorization; the targets are area-downsampled to it).
Metrics: "loss_l_to_ab", "loss_ab_to_l" (the two terms); in classification also "accuracy_ab"
and "accuracy_l" (pixels whose top bin is the true one).

Constructor: ``SplitBrain(encoder, feature_dim, ...)`` where ``encoder`` is a
``SplitBrainEncoder(net_l, net_ab)`` (``build_encoder(name, kwargs, "split_brain")``) and
``feature_dim`` its total feature dimension; each half's comes from ``net_*.feature_dim``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.pretext.base import PretextStep, PretextTask
from workloads.pretext.checks import check_choice, check_range
from workloads.pretext.color.encoders import SplitBrainEncoder
from workloads.pretext.color.lab import (
    ABQuantizer,
    l_bin_centers,
    lab_to_rgb,
    normalized_to_lab,
    quantize_l,
    scale_ab,
    scale_l,
    split_lab,
    unscale_ab,
    unscale_l,
)
from workloads.pretext.decoder import ImageDecoder, image_rows_figure

MODES = ("classification", "regression")


class SplitBrain(PretextTask):
    def __init__(self, encoder: SplitBrainEncoder, feature_dim: int, *, mode: str = "classification",
                 ab_bin_size: int = 10, l_bins: int = 100, output_stride: int = 4, decoder_width: int = 64):
        super().__init__(encoder)
        if not isinstance(encoder, SplitBrainEncoder):
            raise TypeError("SplitBrain needs a SplitBrainEncoder (build_encoder(..., wrapper='split_brain'))")
        if feature_dim != encoder.feature_dim:
            raise ValueError(f"feature_dim {feature_dim} differs from the encoder's {encoder.feature_dim} (net_l + net_ab)")
        self.mode = check_choice("mode", mode, MODES)
        check_range("ab_bin_size", ab_bin_size, 2, 50, integer=True)
        self.l_bins = check_range("l_bins", l_bins, 2, 256, integer=True)
        check_range("decoder_width", decoder_width, 1, 1024, integer=True)
        self.output_stride = check_choice("output_stride", output_stride, (1, 2, 4))
        self.quantizer = ABQuantizer(ab_bin_size)
        classify = mode == "classification"
        self.decoder_ab = ImageDecoder(encoder.net_l.feature_dim, self.quantizer.num_bins if classify else 2,
                                       size=32 // output_stride, width=decoder_width)
        self.decoder_l = ImageDecoder(encoder.net_ab.feature_dim, l_bins if classify else 1,
                                      size=32 // output_stride, width=decoder_width)
        self.register_buffer("l_centers", l_bin_centers(l_bins), persistent=False)

    def _predict(self, images: torch.Tensor):
        """-> (L, ab, predicted ab, predicted L); the predictions at the output resolution."""
        l, ab = split_lab(normalized_to_lab(images))
        size = (images.shape[-2] // self.output_stride, images.shape[-1] // self.output_stride)
        out_ab = self.decoder_ab(self.encoder.net_l(scale_l(l)), out_size=size).float()
        out_l = self.decoder_l(self.encoder.net_ab(scale_ab(ab)), out_size=size).float()
        return l, ab, out_ab, out_l

    def forward(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> PretextStep:
        l, ab, out_ab, out_l = self._predict(images)
        l, ab = (F.interpolate(x, size=out_ab.shape[-2:], mode="area") for x in (l, ab))  # targets at the output resolution
        if self.mode == "regression":
            loss_ab, loss_l = F.mse_loss(out_ab, scale_ab(ab)), F.mse_loss(out_l, scale_l(l))
            metrics = {}
        else:
            bins_ab, bins_l = self.quantizer.encode_hard(ab), quantize_l(l, self.l_bins)
            loss_ab, loss_l = F.cross_entropy(out_ab, bins_ab), F.cross_entropy(out_l, bins_l)
            metrics = {"accuracy_ab": (out_ab.detach().argmax(1) == bins_ab).float().mean(),
                       "accuracy_l": (out_l.detach().argmax(1) == bins_l).float().mean()}
        metrics.update(loss_l_to_ab=loss_ab.detach(), loss_ab_to_l=loss_l.detach())
        return PretextStep(loss_ab + loss_l, metrics)

    @torch.no_grad()
    def figure(self, images: torch.Tensor):
        with self.evaluating():
            images = images[:8]
            l, ab, out_ab, out_l = self._predict(images)
            if self.mode == "classification":
                pred_ab = self.quantizer.annealed_mean(out_ab)
                pred_l = torch.einsum("bkhw,k->bhw", out_l.softmax(1), self.l_centers).unsqueeze(1)  # expected L
            else:
                pred_ab, pred_l = unscale_ab(out_ab), unscale_l(out_l).clamp(0, 100)
            full = l.shape[-2:]
            pred_ab = F.interpolate(pred_ab, size=full, mode="bilinear", align_corners=False)
            pred_l = F.interpolate(pred_l, size=full, mode="bilinear", align_corners=False)
            zero_ab = torch.zeros_like(ab)
            rows = [("original", lab_to_rgb(torch.cat([l, ab], 1))),
                    ("L: input of net_l", lab_to_rgb(torch.cat([l, zero_ab], 1))),
                    ("L + predicted ab (net_l)", lab_to_rgb(torch.cat([l, pred_ab], 1))),
                    ("ab: input of net_ab (shown at L=50)", lab_to_rgb(torch.cat([torch.full_like(l, 50.0), ab], 1))),
                    ("predicted L (net_ab)", lab_to_rgb(torch.cat([pred_l, zero_ab], 1)))]
            return image_rows_figure(rows)
