"""Encoders for pretext tasks whose networks see Lab channels instead of RGB.

Downstream evaluation always feeds an encoder normalised RGB [B, 3, H, W] and takes features
[B, feature_dim]. Colorization (Zhang et al. 2016) trains a network on the lightness L only, and
the split-brain autoencoder (Zhang et al. 2017) trains one network on L and one on ab; these
wrappers convert RGB to Lab inside, so such networks are evaluated (and checkpointed) like any
backbone. The channels are scaled as in ``lab.py``: ``L / 50 - 1`` and ``ab / 110``, both about
[-1, 1].

``build_encoder(backbone, backbone_kwargs, wrapper)`` rebuilds any of them from what a checkpoint
stores; the state_dict keys are ``backbone.*`` (gray) and ``net_l.*`` / ``net_ab.*`` (split-brain).
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.backbones import build_backbone
from workloads.pretext.color.lab import normalized_to_lab, scale_ab, scale_l, split_lab

WRAPPERS = ("gray", "split_brain")


class GrayEncoder(nn.Module):
    """Normalised RGB -> L / 50 - 1 [B, 1, H, W] -> ``backbone`` (built with in_channels=1)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = backbone.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        l, _ = split_lab(normalized_to_lab(images))
        return self.backbone(scale_l(l))


class SplitBrainEncoder(nn.Module):
    """Normalised RGB -> Lab; [net_l(L / 50 - 1), net_ab(ab / 110)] concatenated."""

    def __init__(self, net_l: nn.Module, net_ab: nn.Module):
        super().__init__()
        self.net_l, self.net_ab = net_l, net_ab
        self.feature_dim = net_l.feature_dim + net_ab.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        l, ab = split_lab(normalized_to_lab(images))
        return torch.cat([self.net_l(scale_l(l)), self.net_ab(scale_ab(ab))], dim=1)


def build_encoder(backbone: str, backbone_kwargs: dict | None = None, wrapper: str | None = None) -> nn.Module:
    """None: ``build_backbone(backbone, **kwargs)``; "gray": GrayEncoder over a 1-channel backbone;
    "split_brain": SplitBrainEncoder over a 1-channel (L) and a 2-channel (ab) backbone, each built
    with the same kwargs (halving the width for each half, as Zhang et al. do, is the caller's choice)."""
    kwargs = dict(backbone_kwargs or {})
    if wrapper is None:
        return build_backbone(backbone, **kwargs)
    if wrapper not in WRAPPERS:
        raise ValueError(f"unknown encoder wrapper {wrapper!r}; valid: None, {', '.join(repr(w) for w in WRAPPERS)}")
    if "in_channels" in kwargs:
        raise ValueError(f"backbone_kwargs must not set in_channels with wrapper {wrapper!r}: the wrapper sets it")
    if wrapper == "gray":
        return GrayEncoder(build_backbone(backbone, in_channels=1, **kwargs))
    return SplitBrainEncoder(build_backbone(backbone, in_channels=1, **kwargs), build_backbone(backbone, in_channels=2, **kwargs))
