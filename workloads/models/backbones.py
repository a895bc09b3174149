"""Backbones: image encoders mapping float images ``[B, 3, H, W]`` to features ``[B, feature_dim]``.

- ``resnet18_cifar``: torchvision's ResNet-18 with the CIFAR stem used by SimCLR/MoCo/solo-learn
  on 32x32 images (3x3 stride-1 first conv, no max-pool), classifier removed; 512-d features.
- ``SmallConvNet``: four conv-BN-ReLU blocks and global average pooling; fast enough on a CPU
  for tests and the quick start.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["resnet18_cifar", "SmallConvNet", "build_backbone", "BACKBONES"]


def resnet18_cifar(in_channels: int = 3) -> nn.Module:
    """ResNet-18 for 32x32 images: 3x3 stride-1 stem conv, no max-pool, ``fc = Identity``.

    Randomly initialised (``weights=None``); ``model.feature_dim == 512``. ``in_channels`` is 3 for
    RGB; the pretext tasks that see other channels (L, ab of Lab) build it with 1 or 2.
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    import torchvision  # here: its import costs seconds (torch._dynamo) that a SmallConvNet run never needs

    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.feature_dim = 512
    return model


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallConvNet(nn.Module):
    """A small, fast ConvNet for 32x32 images (CPU tests, quick start).

    Channels ``width -> 2w -> 4w -> 8w``; the last three blocks halve the resolution
    (32 -> 16 -> 8 -> 4), then global average pooling. ``feature_dim = 8 * width``.
    """

    def __init__(self, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        self.feature_dim = 8 * width
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width, stride=1),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
            _conv_bn_relu(4 * width, 8 * width, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": resnet18_cifar,
    "small_convnet": SmallConvNet,
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name (``"resnet18_cifar"`` or ``"small_convnet"``); kwargs go to its constructor."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)
