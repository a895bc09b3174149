"""Backbones and heads: plain PyTorch modules (torch/torchvision only)."""

from .backbones import (
    BACKBONES,
    SmallConvNet,
    build_backbone,
    resnet18_cifar,
)
from .heads import ProjectionHead

__all__ = ["BACKBONES", "SmallConvNet", "build_backbone", "resnet18_cifar", "ProjectionHead"]
