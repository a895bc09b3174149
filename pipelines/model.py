"""The registered model: an encoder that takes images as they come ([N, 3, H, W] in [0, 1]) and
normalises them itself, so `models:/NAME@champion` needs nothing else; and its kNN top-1 on the
pipeline's fixed evaluation set, computed the same way for a candidate and for a loaded champion."""
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from workloads.checkpoint import checkpoint_normalization, load_encoder
from workloads.data import ImageDataset, Normalization, load_images, using_normalization
from workloads.evaluate import knn_accuracy

BATCH = 512


class EncoderModel(nn.Module):
    """backbone(normalise(x)) for images x in [0, 1]; the normalisation is the training split's."""

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.backbone, self.mean, self.std = backbone, tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalization = Normalization(self.mean, self.std)
        with using_normalization(normalization):  # encoders that convert their input (e.g. to Lab) read it
            return self.backbone(normalization.normalize(x))


def encoder_model(checkpoint: str) -> tuple[EncoderModel, dict]:
    """The encoder.pt of an sslab run as an EncoderModel (CPU, eval mode), with the checkpoint's metadata."""
    backbone, metadata = load_encoder(checkpoint, "cpu")
    normalization = checkpoint_normalization(metadata)
    return EncoderModel(backbone, normalization.mean, normalization.std).eval(), metadata


@dataclass
class EvaluationSet:
    train: ImageDataset
    test: ImageDataset
    knn_k: int
    knn_temperature: float

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.train.content_hash}/{self.test.content_hash}".encode()).hexdigest()[:16]


def load_evaluation(evaluation, image_size: int | None = None) -> EvaluationSet:
    """The pipeline's `evaluation:` block, loaded (workloads.data: Parquet, S3, folders; #split=...)."""
    load = dict(image_size=image_size, s3_endpoint_url=evaluation.s3_endpoint_url)
    return EvaluationSet(load_images(evaluation.train, **load), load_images(evaluation.test, **load),
                         evaluation.knn_k, evaluation.knn_temperature)


@torch.no_grad()
def features(model: nn.Module, images_uint8: torch.Tensor) -> torch.Tensor:
    if not isinstance(model, torch.fx.GraphModule):  # a loaded pt2 export runs as exported (eval) and refuses .eval()
        model.eval()
    return torch.cat([model(images_uint8[i:i + BATCH].float().div(255.0)).float()
                      for i in range(0, len(images_uint8), BATCH)])


def knn_top1(model: nn.Module, data: EvaluationSet) -> float:
    """kNN top-1 of the model's features on the evaluation set (workloads.evaluate.knn_accuracy)."""
    return float(knn_accuracy(features(model, data.train.images), data.train.labels, features(model, data.test.images),
                              data.test.labels, k=data.knn_k, temperature=data.knn_temperature))
