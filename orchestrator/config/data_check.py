"""Before any work: what a config says about its data holds for the data itself.

Read from the labels alone (a local Parquet file's schema and label column, an image folder's
listing), so no image is decoded and no Ray or MLflow is started: the scheme of each data URI, the
columns, every label a class index, every class in every split, and a training split that fills
one batch. Remote data (s3://) is probed by orchestrator.services; cifar10:// and video data are
checked when loaded (their labels are not cheap to read here).
"""
import os

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.video_workload import VIDEO_KINDS
from workloads.data.errors import DataError

SCHEMES = ("s3", "cifar10")  # URIs with '://' that sslab reads; the others are local paths, synthetic:, package:
VALID = "a local .parquet file or image folder, s3://BUCKET/KEY.parquet or cifar10://ROOT"
SPLIT_KEYS = ("data.val_fraction", "data.test_fraction")


class ConfigProblem(ValueError):
    """Raised here, reported by the loader as its ConfigError (which this module cannot import: the loader calls it)."""



def check_data(path: str, config: SSLabConfig) -> None:
    """ConfigProblem / DataError naming the config file, the key and what would be valid."""
    data = config.data
    for key, uri in (("data.uri", data.uri), ("data.test_uri", data.test_uri), ("eval.images_uri", config.eval.images_uri)):
        base = (uri or "").partition("#")[0]
        if "://" in base and base.partition("://")[0] not in SCHEMES:
            raise ConfigProblem(f"{path}: {key}: unsupported scheme {base.partition('://')[0]!r} in {uri!r}; valid: {VALID}"
                              + (" (video: a folder, s3://PREFIX/, synthetic:moving_objects?...)" if key == "data.uri" else ""))
        if key != "data.uri" and base and "://" not in base and not os.path.exists(base):
            raise ConfigProblem(f"{path}: {key}: no such file or directory: {base!r} (paths are relative to the working "
                              f"directory); valid: {VALID}")
    if config.workload.kind in VIDEO_KINDS or not _local(data.uri):
        return
    try:
        found = _labels(data.uri, data)
        test = _labels(data.test_uri, data) if data.test_uri and _local(data.test_uri) else None
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    if found is None:
        return
    labels, classes = found
    num_classes = len(classes) if classes else int(labels.max()) + 1
    if test is not None and int(test[0].max()) >= num_classes:
        raise DataError(f"{path}: data.test_uri {data.test_uri}: label {int(test[0].max())} is out of range; data.uri "
                        f"has {num_classes} classes (valid labels 0..{num_classes - 1})")
    from workloads.data.split import split_three_ways

    test_fraction = 0.0 if data.test_uri else data.test_fraction
    try:
        train = split_three_ways(labels, data.val_fraction, test_fraction, config.seed, classes, SPLIT_KEYS)[0]
    except DataError as error:
        raise DataError(f"{path}: data.uri {data.uri}: {error}") from None
    check_batch(path, config, len(train), len(labels))


def check_batch(path: str, config: SSLabConfig, train_images: int, images: int) -> None:
    """Every step takes a full batch (drop_last): a batch larger than the training split never fills."""
    sizes = [("train.batch_size", config.train.batch_size)]
    spec = config.search.space.get("train.batch_size") if config.search is not None else None
    if spec is not None and spec.values():
        sizes.append(("search.space.train.batch_size", max(v for v in spec.values() if isinstance(v, (int, float)))))
    for key, size in sizes:
        if size > train_images:
            raise ConfigProblem(
                f"{path}: {key} ({size}) is larger than the training split of data.uri: {train_images} of its {images} "
                f"images (after data.val_fraction {config.data.val_fraction} and data.test_fraction "
                f"{0.0 if config.data.test_uri else config.data.test_fraction}); every step takes a full batch. Valid: "
                f"{key} <= {train_images}, or more data")


def _local(uri: str | None) -> bool:
    base = (uri or "").partition("#")[0]
    return bool(base) and "://" not in base and not base.startswith(("synthetic:", "package:")) and os.path.exists(base)


def _labels(uri: str, data):
    from workloads.data.load import load_labels

    return load_labels(uri, data.format, data.label_column, data.s3_endpoint_url, image_column=data.image_column)
