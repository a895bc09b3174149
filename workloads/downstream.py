"""Downstream scores of a frozen encoder: the same procedure at the end of training, for pruning,
and in `sslab eval`.

The labelled memory of the kNN classifier and the linear probe's training set are always the
training split. The probe's weight decay is chosen on a held-out share of the training features
(workloads.evaluate.linear_probe), and the probe is fitted once and scored on every evaluated split.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from workloads.augment import SimCLRAugment
from workloads.data import ImageDataset, Normalization, using_normalization
from workloads.evaluate import alignment, knn_accuracy, uniformity
from workloads.evaluate.features import extract_features
from workloads.evaluate.linear_probe import fit_linear_probe
from workloads.evaluate.precision import autocast


def downstream_scores(
    backbone: nn.Module,
    train: ImageDataset,
    evaluated: ImageDataset,
    normalization: Normalization,
    augment: SimCLRAugment | None = None,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    linear_probe: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
    held_out: ImageDataset | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
) -> tuple[dict[str, float], torch.Tensor]:
    """Metric name -> value (DESIGN.md names), plus the evaluated split's features for figures.

    `evaluated` (the validation split in a run, the user's test data in `sslab eval`) gives
    downstream/knn_top1, downstream/linear_top1 and repr/*; `held_out` (a run's test split) gives
    test/knn_top1 and test/linear_top1. normalization: the training split's statistics, what the
    encoder was trained on. augment: the run's configured augmentation (its mean/std must be
    `normalization`'s); None: SimCLRAugment's default parameters with that normalisation.
    precision, channels_last: how the backbone runs (see extract_features; default exact fp32 NCHW);
    the classifiers and metrics always work on float32 features.
    """
    how = dict(device=device, precision=precision, channels_last=channels_last)
    train_x = extract_features(backbone, train.images, normalization, **how)
    splits = {"downstream": evaluated} | ({"test": held_out} if held_out is not None else {})
    features = {prefix: extract_features(backbone, split.images, normalization, **how)
                for prefix, split in splits.items()}
    scores = {}
    for prefix, split in splits.items():
        scores[f"{prefix}/knn_top1"] = knn_accuracy(train_x, train.labels, features[prefix], split.labels, k=knn_k,
                                                    temperature=knn_temperature)
    if linear_probe:
        classes = max([train.num_classes] + [int(split.labels.max()) + 1 for split in splits.values()])
        probe = fit_linear_probe(train_x, train.labels, seed=seed, num_classes=classes)
        for prefix, split in splits.items():
            scores[f"{prefix}/linear_top1"] = probe.accuracy(features[prefix], split.labels)
    scores.update(representation_scores(backbone, evaluated.images, normalization, augment, device, seed, precision,
                                        channels_last))
    return scores, features["downstream"]


def linear_top1(backbone: nn.Module, train: ImageDataset, evaluated: ImageDataset, normalization: Normalization,
                device: str | torch.device = "cpu", seed: int = 0, precision: str = "fp32",
                channels_last: bool = False) -> float:
    """downstream/linear_top1 alone (a probe fitted on the training split, scored on `evaluated`)."""
    how = dict(device=device, precision=precision, channels_last=channels_last)
    train_x = extract_features(backbone, train.images, normalization, **how)
    test_x = extract_features(backbone, evaluated.images, normalization, **how)
    classes = max(train.num_classes, int(evaluated.labels.max()) + 1)
    return fit_linear_probe(train_x, train.labels, seed=seed, num_classes=classes).accuracy(test_x, evaluated.labels)


def representation_scores(backbone: nn.Module, images: torch.Tensor, normalization: Normalization,
                          augment: SimCLRAugment | None = None, device: str | torch.device = "cpu",
                          seed: int = 0, precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """repr/alignment and repr/uniformity (Wang & Isola 2020) of L2-normalised features of two views of
    `images` (uint8) drawn by `augment` with a fixed seed, so the numbers repeat. Uniformity is the mean
    of the two views' uniformities (as Wang & Isola compute it), not that of the pooled views, which
    would count each image's positive pair as a uniformity pair. precision, channels_last: as in
    extract_features (the views are drawn in fp32 either way)."""
    if augment is None:
        augment = SimCLRAugment(image_size=images.shape[-1], mean=normalization.mean, std=normalization.std)
    if tuple(augment.mean) != tuple(normalization.mean) or tuple(augment.std) != tuple(normalization.std):
        raise ValueError(f"the augmentation normalises with mean {augment.mean}, std {augment.std}, but the encoder "
                         f"was trained with {normalization.mean}, {normalization.std}")
    device = torch.device(device)
    augment = augment.to(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        view1, view2 = augment(images.to(device))
    z1, z2 = (F.normalize(_features(backbone, view, normalization, precision, channels_last), dim=1)
              for view in (view1, view2))
    return {"repr/alignment": float(alignment(z1, z2)),
            "repr/uniformity": float((uniformity(z1) + uniformity(z2)) / 2)}


@torch.no_grad()
def _features(backbone: nn.Module, views: torch.Tensor, normalization: Normalization, precision: str = "fp32",
              channels_last: bool = False, batch_size: int = 512) -> torch.Tensor:
    """float32 CPU features of already-normalised views (extract_features takes uint8 images)."""
    if channels_last:  # NHWC input for a backbone training converted to channels_last; the backbone is not changed
        views = views.contiguous(memory_format=torch.channels_last)
    was_training = backbone.training
    backbone.eval()
    try:
        with using_normalization(normalization), autocast(precision, views.device):
            return torch.cat([backbone(views[i : i + batch_size]).float().cpu() for i in range(0, len(views), batch_size)])
    finally:
        backbone.train(was_training)
