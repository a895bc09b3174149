"""The downstream scores every video workload reports, of a frozen encoder.

    downstream/propagation/j_mean     label propagation J on the test clips with masks (workloads.video.propagation)
    baseline/copy_first_frame/j_mean  the J of never moving the first frame's mask, on the same clips
    downstream/clip_knn_top1          kNN on clip features (the mean of the frames' pooled features)
    downstream/clip_linear_top1       a linear probe on the same clip features
    downstream/knn_top1               the image kNN, the same as the image workloads report

Propagation asks whether the features find the same point in the next frame (what video pretext
tasks should teach); the clip scores and the image kNN ask what pooled features have always been
asked, so a video run compares with an image run on the same number. Each score needs its data
(masks, clip labels, an image set): without it the key is left out rather than reported as 0.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from workloads.data import ImageDataset, Normalization, using_normalization
from workloads.evaluate import knn_accuracy
from workloads.evaluate.features import extract_features
from workloads.evaluate.linear_probe import fit_linear_probe
from workloads.video.dataset import VideoDataset
from workloads.video.propagation import copy_first_frame_j, j_mean


def clip_features(encoder: nn.Module, clips_uint8: torch.Tensor, normalization: Normalization,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """float32 [N, D] (CPU): each clip's frames through workloads.evaluate's extract_features (eval mode,
    the training split's normalisation), averaged over the frames (a clip is its frames' average look:
    order-blind, the plainest clip descriptor, and what a kNN over clips needs)."""
    n, t = clips_uint8.shape[:2]
    return extract_features(encoder, clips_uint8.flatten(0, 1), normalization, device=device).view(n, t, -1).mean(1)


def _propagation_scores(encoder: nn.Module, test: VideoDataset, normalization: Normalization, knobs: dict,
                        max_clips: int) -> dict[str, float]:
    if test.masks is None or len(test) == 0:
        return {}
    # The first clips, in the data set's order: the same clips for every run and for the baselines.
    clips, masks = test.clips[:max_clips], test.masks[:max_clips]
    normalised = normalization.normalize(clips.float().div_(255.0))
    with using_normalization(normalization):  # encoders that convert their input (Lab) read it
        j = j_mean(encoder, normalised, masks, **knobs)
    if math.isnan(j):  # no object in any of these clips (masks all background): nothing was scored
        return {}
    return {"downstream/propagation/j_mean": j, "baseline/copy_first_frame/j_mean": copy_first_frame_j(masks)}


def _clip_scores(encoder: nn.Module, train: VideoDataset, test: VideoDataset, normalization: Normalization,
                 knn_k: int, knn_temperature: float, device: str | torch.device) -> dict[str, float]:
    if train.labels is None or test.labels is None or len(train) == 0 or len(test) == 0:
        return {}
    train_x = clip_features(encoder, train.clips, normalization, device)
    test_x = clip_features(encoder, test.clips, normalization, device)
    classes = max(len(train.classes), int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    probe = fit_linear_probe(train_x, train.labels, num_classes=classes)  # L-BFGS: about a second on CPU
    return {"downstream/clip_knn_top1": knn_accuracy(train_x, train.labels, test_x, test.labels, k=knn_k,
                                                     temperature=knn_temperature, num_classes=classes),
            "downstream/clip_linear_top1": probe.accuracy(test_x, test.labels)}


def video_scores(
    encoder: nn.Module,
    normalization: Normalization,
    *,
    train: VideoDataset,
    test: VideoDataset,
    images_train: ImageDataset | None = None,
    images_test: ImageDataset | None = None,
    knn_k: int = 20,
    knn_temperature: float = 0.1,
    propagation: dict | None = None,
    max_clips: int = 32,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Metric name -> value for a frozen `encoder` (already on `device`; normalised RGB [B, 3, H, W] ->
    [B, D], with a spatial map workloads.video.features.feature_map knows), keys as in the module doc.

    normalization: the training split's, what the encoder was trained on. The propagation scores
    (only if `test` has masks with an object in them) use the first `max_clips` test clips (propagation costs a feature
    attention per frame; the clip and image scores use every clip and image), with `propagation`'s
    knobs passed to propagate (topk, temperature, context, radius; None: its defaults). The clip scores
    need labels on both `train` (the kNN's memory, the probe's training set) and `test`; the image kNN
    needs both image sets (train: the memory). The random-init baseline is not computed here: the
    caller calls video_scores again with a freshly initialised encoder and prefixes those keys.
    """
    if max_clips < 1:
        raise ValueError(f"max_clips must be >= 1, got {max_clips}")
    scores = _propagation_scores(encoder, test, normalization, dict(propagation or {}), max_clips)
    scores |= _clip_scores(encoder, train, test, normalization, knn_k, knn_temperature, device)
    if images_train is not None and images_test is not None:
        train_x = extract_features(encoder, images_train.images, normalization, device=device)
        test_x = extract_features(encoder, images_test.images, normalization, device=device)
        scores["downstream/knn_top1"] = knn_accuracy(train_x, images_train.labels, test_x, images_test.labels,
                                                     k=knn_k, temperature=knn_temperature)
    return scores
