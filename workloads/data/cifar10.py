"""CIFAR-10 through torchvision, for users with internet (downloads once into ROOT)."""
import hashlib

import torch
from torchvision.datasets import CIFAR10

from workloads.data.dataset import ImageDataset


def load_cifar10(root: str, train: bool = True, download: bool = True) -> ImageDataset:
    dataset = CIFAR10(root=root, train=train, download=download)
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    source = f"cifar10://{root}?train={str(train).lower()}"
    return ImageDataset(images, labels, list(dataset.classes), source, digest)
