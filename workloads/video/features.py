"""Spatial feature maps of a backbone, for the tasks and scores that attend over pixels.

The backbones map an image to one pooled vector; attention over pixels (video colorization's colour
copying, the cycle-consistency walk, label propagation) needs a feature per location instead. Both
backbones give one at stride 4 from their early layers, the resolution the colour-copying and
propagation literature works at (Vondrick et al. 2018 copy colours at 1/4 of the frame size; so does
the label propagation of Jabri et al. 2020):

- ``SmallConvNet``: ``features[:3]`` (the stride-1 block, then two stride-2 blocks; 4w channels);
- ``resnet18_cifar``: conv1, bn1, relu, maxpool (an Identity in the CIFAR stem), layer1 (stride 1),
  layer2, layer3 (stride 2 each); 256 channels. With torchvision's ImageNet stem (stride-2 conv1 and
  a real max-pool) the same layers would give stride 16.

``feature_map(encoder, x)``: normalised RGB [B, 3, H, W] -> [B, C, H / 4, W / 4] (rounded up).
An encoder inside DistributedDataParallel (``.module``) is unwrapped.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from workloads.models.backbones import SmallConvNet


def feature_map(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's spatial features at stride 4 (for the backbones above); a ValueError otherwise."""
    net = getattr(encoder, "module", encoder)
    if isinstance(net, SmallConvNet):
        return net.features[:3](x)
    if isinstance(net, torchvision.models.ResNet):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer3(net.layer2(net.layer1(x)))
    raise ValueError(f"feature_map knows SmallConvNet and the torchvision ResNet (resnet18_cifar), "
                     f"not {type(net).__name__}: it cannot tell where that network's stride-4 features are")


def feature_stride(encoder: nn.Module, size: int = 32) -> int:
    """The stride of ``feature_map`` for this encoder, measured on a blank image of ``size`` pixels."""
    net = getattr(encoder, "module", encoder)
    param = next(net.parameters())
    was_training = net.training
    net.eval()  # BatchNorm running statistics: the blank probe must not move them
    try:
        with torch.no_grad():
            h = feature_map(net, torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)).shape[-1]
    finally:
        net.train(was_training)
    return size // h
