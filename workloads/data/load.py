"""One entry point for every data source, addressed by URI.

    path/to/file.parquet, s3://bucket/key.parquet   Parquet (image bytes + label columns)
    path/to/folder                                  image-folder tree ROOT/<class>/<image>
    cifar10://ROOT  (cifar10://ROOT?train=false)    CIFAR-10 via torchvision (downloads)

A fragment selects one part of the deterministic stratified split, so the same rows can be named
on the command line:  file.parquet#split=val&val_fraction=0.2&test_fraction=0.1&seed=0
(split: train, val or test; test_fraction defaults to 0, i.e. a two-way split).
"""
import os
from urllib.parse import parse_qs, urlsplit

import torch

from workloads.data.dataset import ImageDataset
from workloads.data.errors import DataError
from workloads.data.split import split_three_ways

# The readers (pyarrow, PIL, torchvision: seconds of imports) are imported by the branch that reads:
# a process that only splits, or gets decoded data from elsewhere (a Ray Train worker), never pays them.


def detect_format(uri: str) -> str:
    if uri.startswith("cifar10://"):
        return "cifar10"
    if uri.endswith(".parquet") or uri.endswith(".pq"):
        return "parquet"
    if uri.startswith("s3://"):
        return "parquet"
    if os.path.isdir(uri):
        return "folder"
    if not os.path.exists(uri):
        raise DataError(f"{uri}: no such file or directory; expected a .parquet file, an s3:// URI, an image folder or cifar10://ROOT")
    raise DataError(f"{uri}: unknown data format; expected a .parquet file, an s3:// URI, an image folder or cifar10://ROOT")


def load_images(
    uri: str,
    format: str = "auto",
    image_column: str = "image",
    label_column: str = "label",
    image_size: int | None = None,
    s3_endpoint_url: str | None = None,
) -> ImageDataset:
    base, _, fragment = uri.partition("#")
    kind = detect_format(base) if format == "auto" else format
    if kind == "parquet":
        from workloads.data.parquet import load_parquet

        dataset = load_parquet(base, image_column, label_column, image_size, s3_endpoint_url)
    elif kind == "folder":
        from workloads.data.image_folder import load_image_folder

        dataset = load_image_folder(base, image_size)
    elif kind == "cifar10":
        from workloads.data.cifar10 import load_cifar10

        parts = urlsplit(base)
        train = parse_qs(parts.query).get("train", ["true"])[0].lower() != "false"
        dataset = load_cifar10(parts.netloc + parts.path, train=train)
    else:
        raise DataError(f"{uri}: unknown data format '{format}'; valid: auto, parquet, folder, cifar10")
    return select_split(dataset, fragment) if fragment else dataset


def select_split(dataset: ImageDataset, fragment: str) -> ImageDataset:
    return dataset.subset(split_indices(dataset.labels, dataset.classes, dataset.source, fragment))


def split_indices(labels: torch.Tensor, classes: list[str] | None, source: str, fragment: str) -> torch.Tensor:
    """The rows a #split=... fragment selects (see the module docstring)."""
    query = {key: values[-1] for key, values in parse_qs(fragment).items()}
    unknown = set(query) - {"split", "val_fraction", "test_fraction", "seed"}
    if unknown or query.get("split") not in ("train", "val", "test"):
        raise DataError(f"{source}#{fragment}: bad split selector; expected "
                        "#split=train|val|test&val_fraction=F&test_fraction=T&seed=S")
    try:
        val_fraction, test_fraction = float(query.get("val_fraction", 0.1)), float(query.get("test_fraction", 0.0))
        seed = int(query.get("seed", 0))
    except ValueError:
        raise DataError(f"{source}#{fragment}: val_fraction and test_fraction must be numbers, seed an integer") from None
    if query["split"] == "test" and test_fraction == 0:
        raise DataError(f"{source}#{fragment}: split=test needs test_fraction above 0")
    parts = split_three_ways(labels, val_fraction, test_fraction, seed, classes)
    return parts[("train", "val", "test").index(query["split"])]


def load_labels(uri: str, format: str = "auto", label_column: str = "label", s3_endpoint_url: str | None = None,
                image_column: str | None = None) -> tuple[torch.Tensor, list[str] | None] | None:
    """The labels (and class names where known) of a data set without decoding its images: a Parquet
    file's label column, an image folder's listing; the rows its #split=... fragment selects. None where
    that is not cheap (cifar10://). image_column: also check that a Parquet file has it."""
    base, _, fragment = uri.partition("#")
    kind = detect_format(base) if format == "auto" else format
    if kind == "parquet":
        from workloads.data.parquet import load_parquet_labels

        labels, classes = load_parquet_labels(base, label_column, s3_endpoint_url, image_column)
    elif kind == "folder":
        from workloads.data.image_folder import load_folder_labels

        labels, classes = load_folder_labels(base)
    else:
        return None
    return (labels[split_indices(labels, classes, base, fragment)] if fragment else labels), classes
