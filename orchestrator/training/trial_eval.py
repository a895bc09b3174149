"""What a trial measures outside its training step: its data splits, the validation metrics that
select (the pruner's per-epoch value), and the random-init baseline.

Selection reads the validation split only: the pruner gets the configured `search.objective` each
epoch, computed on val where it is not a per-epoch training metric; the test split (held out) is
scored once, at the end (orchestrator.training.final_report), and nothing reads it to choose.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import ray
import torch

from orchestrator.config.schema import SSLabConfig
from workloads.augment import SimCLRAugment
from workloads.data import (
    DataError,
    ImageDataset,
    Normalization,
    check_class_sizes,
    load_images,
    load_labels,
    split_three_ways,
)
from workloads.downstream import linear_top1, representation_scores
from workloads.evaluate import knn_accuracy
from workloads.evaluate.features import extract_features
from workloads.evaluate.precision import FP32, FeaturePrecision, resolve_precision
from workloads.training.loop import use_channels_last

# The objectives computed on the validation split when the pruner asks for them (not per-epoch metrics).
VAL_METRICS = ("downstream/knn_top1", "downstream/linear_top1", "repr/alignment", "repr/uniformity")
VIDEO_VAL_METRICS = ("downstream/propagation/j_mean", "downstream/clip_knn_top1", "downstream/knn_top1")
PER_EPOCH_PREFIXES = ("train/", "bank/", "pretext/")  # reported by the training loop every epoch: no extra evaluation
SPLIT_KEYS = ("data.val_fraction", "data.test_fraction")


class Splits(NamedTuple):
    """A run's data: train (the encoder's training data, the kNN memory, the probe's training set),
    val (selects), test (held out: None with data.test_fraction 0 and no data.test_uri), and the
    normalisation measured on train."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    normalization: Normalization


def load_splits(config: SSLabConfig) -> Splits:
    """data.uri split train / val / test (stratified, seeded by config.seed), or train / val with the
    test set from data.test_uri; the per-channel normalisation measured on train, once."""
    data_config = config.data
    data = load_images(data_config.uri, data_config.format, data_config.image_column, data_config.label_column,
                       data_config.image_size, data_config.s3_endpoint_url)
    test_fraction = 0.0 if data_config.test_uri else data_config.test_fraction
    train_idx, val_idx, test_idx = split_three_ways(data.labels, data_config.val_fraction, test_fraction, config.seed,
                                                    data.classes, SPLIT_KEYS)
    train, val = data.subset(train_idx), data.subset(val_idx)
    test = data.subset(test_idx) if test_fraction > 0 else None
    if data_config.test_uri:
        test = load_images(data_config.test_uri, data_config.format, data_config.image_column,
                           data_config.label_column, data_config.image_size, data_config.s3_endpoint_url)
        if int(test.labels.max()) >= data.num_classes:
            raise DataError(f"data.test_uri {data_config.test_uri}: label {int(test.labels.max())} is out of range; "
                            f"data.uri has {data.num_classes} classes (labels 0..{data.num_classes - 1})")
    return Splits(train, val, test, Normalization.of_images(train.images))


def check_splits(config: SSLabConfig) -> None:
    """Before any work: every class of data.uri can give each split an image at these fractions (read
    from the labels alone; a DataError naming the keys otherwise). Data sets whose labels cannot be read
    cheaply (cifar10://, whose classes are large) are checked when loaded."""
    data = config.data
    found = load_labels(data.uri, data.format, data.label_column, data.s3_endpoint_url)
    if found is not None:
        labels, classes = found
        check_class_sizes(labels, data.val_fraction, 0.0 if data.test_uri else data.test_fraction, classes, SPLIT_KEYS)
    if data.test_uri:
        try:
            test = load_labels(data.test_uri, data.format, data.label_column, data.s3_endpoint_url)
        except DataError as error:
            raise DataError(f"data.test_uri: {error}") from None
        if found is not None and test is not None:
            num_classes = len(classes) if classes else int(labels.max()) + 1
            if int(test[0].max()) >= num_classes:
                raise DataError(f"data.test_uri {data.test_uri}: label {int(test[0].max())} is out of range; data.uri "
                                f"has {num_classes} classes (labels 0..{num_classes - 1})")


def data_record(splits: Splits) -> dict[str, str]:
    """Reported with a run's first epoch and recorded as params (orchestrator.tracking.REPORTED_PARAMS):
    the data's content hash, the normalisation, and the test set's hash when it comes from data.test_uri."""
    record = {"sslab.data_hash": splits.train.content_hash,
              **{f"sslab.{key}": value for key, value in splits.normalization.params().items()}}
    if splits.test is not None and splits.test.source != splits.train.source:
        record["sslab.test_data_hash"] = splits.test.content_hash
    return record


def make_augment(config: SSLabConfig, normalization: Normalization) -> SimCLRAugment:
    """The configured augmentation (the config's augment block), normalising with the data's statistics:
    what training uses and what repr/* are measured with."""
    return SimCLRAugment(config.data.image_size, **config.augment.model_dump(), mean=normalization.mean,
                         std=normalization.std)


def eval_precision(config: SSLabConfig, device) -> FeaturePrecision:
    """eval.precision on this device. train: the features are computed as training ran the backbone
    (train.precision and train.channels_last resolved here: bf16 + NHWC on CUDA by default, fp32 NCHW
    on the CPU unless set), for training's speed-up; fp32: exact fp32 NCHW scores."""
    if config.eval.precision == "fp32":
        return FP32
    device = torch.device(device)
    return FeaturePrecision(resolve_precision(config.train.precision, device),
                            use_channels_last(config.train.channels_last, device))


def precision_record(scoring: FeaturePrecision) -> dict[str, str]:
    """Reported with a run's first epoch and recorded as params (orchestrator.tracking.REPORTED_PARAMS):
    how its downstream/*, repr/* and test/* scores were computed."""
    return {"sslab.eval_precision": scoring.precision, "sslab.eval_channels_last": str(scoring.channels_last)}


def knn_top1(config: SSLabConfig, backbone, memory: ImageDataset, query: ImageDataset, normalization: Normalization,
             device, scoring: FeaturePrecision = FP32) -> float:
    """kNN top-1 of `query` with `memory` (the training split) as the labelled memory; scoring: how the
    features are computed (default exact fp32, what bench/peers.py scores both sides with)."""
    features = [extract_features(backbone, split.images, normalization, device=device, **scoring._asdict())
                for split in (memory, query)]
    return knn_accuracy(features[0], memory.labels, features[1], query.labels, k=config.eval.knn_k,
                        temperature=config.eval.knn_temperature)


def random_init_knn(config: SSLabConfig, backbone, splits: Splits, device, scoring: FeaturePrecision = FP32) -> dict:
    return {"downstream/random_init/knn_top1": knn_top1(config, backbone, splits.train, splits.val,
                                                        splits.normalization, device, scoring)}


def val_metrics(config: SSLabConfig, encoder, splits: Splits, objective: str, device,
                scoring: FeaturePrecision = FP32) -> dict[str, float]:
    """The validation-split metric `objective` (one of VAL_METRICS) of the encoder as it is now (repr/*
    come as a pair: both are measured on the same views); scoring: how the features are computed (the
    worker passes eval_precision's, as the final evaluation uses)."""
    if objective == "downstream/knn_top1":
        return {objective: knn_top1(config, encoder, splits.train, splits.val, splits.normalization, device, scoring)}
    if objective == "downstream/linear_top1":
        return {objective: linear_top1(encoder, splits.train, splits.val, splits.normalization, device, config.seed,
                                       **scoring._asdict())}
    if objective in ("repr/alignment", "repr/uniformity"):
        return representation_scores(encoder, splits.val.images, splits.normalization,
                                     make_augment(config, splits.normalization), device, config.seed,
                                     **scoring._asdict())
    raise ValueError(f"search.objective {objective!r} is not measured on the validation split during training; "
                     f"the pruner can use {', '.join(VAL_METRICS)}, or a train/ or bank/ metric")


def check_pruning_objective(objective: str, video: bool = False) -> None:
    """Before any work: the pruner needs the objective every epoch. A ValueError unless it is a
    validation metric computed on demand (VAL_METRICS; a video workload's VIDEO_VAL_METRICS) or one
    the training loop reports each epoch."""
    measured = VIDEO_VAL_METRICS if video else VAL_METRICS
    if objective not in measured and not objective.startswith(PER_EPOCH_PREFIXES):
        raise ValueError(f"search.objective {objective!r} has no per-epoch value for the pruner: use one of "
                         f"{', '.join(measured)} or a train/, bank/ or pretext/ metric, or set search.pruner: none")


def should_prune(pruning: dict, metrics: dict, epoch: int, rank: int, world: int,
                 evaluate: Callable[[str], dict[str, float]]) -> bool:
    """Rank 0 reports the epoch's value of the configured objective to the sweep's study coordinator
    (the study applies its own direction); every rank learns the verdict.

    A metric the epoch already has (train/..., bank/...) is reported as it is; otherwise
    `evaluate(objective)` measures it on the validation split (see val_metrics), and what it returns
    joins `metrics`, so the run logs exactly the value the pruner saw at step = epoch."""
    verdict = [False]
    if rank == 0:
        objective = pruning["objective"]
        if objective not in metrics:
            metrics.update(evaluate(objective))
        if objective not in metrics:
            raise ValueError(f"search.objective {objective!r} is not among this epoch's metrics "
                             f"({', '.join(sorted(k for k in metrics if '/' in k))}) and not measured on val")
        verdict = [ray.get(pruning["coordinator"].report.remote(pruning["trial"], epoch, float(metrics[objective])))]
    if world > 1:
        torch.distributed.broadcast_object_list(verdict, src=0)
    return bool(verdict[0])
