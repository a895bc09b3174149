"""Backbones and heads: plain PyTorch modules (torch/torchvision only)."""

from workloads.models.backbones import (
    BACKBONES,
    SmallConvNet,
    build_backbone,
    resnet18_cifar,
)
from workloads.models.heads import ProjectionHead

__all__ = ["BACKBONES", "SmallConvNet", "build_backbone", "resnet18_cifar", "ProjectionHead"]
