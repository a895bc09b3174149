from dataclasses import dataclass

import torch


@dataclass
class ImageDataset:
    """Decoded images held in memory once, so no epoch decodes JPEG again.

    images: uint8 [N, 3, H, W]; labels: int64 [N]; content_hash: sha256 of the encoded images and labels.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str
    content_hash: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor) -> "ImageDataset":
        return ImageDataset(self.images[indices], self.labels[indices], self.classes, self.source, self.content_hash)
