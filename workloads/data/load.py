"""One entry point for every data source, addressed by URI.

    path/to/file.parquet, s3://bucket/key.parquet   Parquet (image bytes + label columns)
    path/to/folder                                  image-folder tree ROOT/<class>/<image>
    cifar10://ROOT  (cifar10://ROOT?train=false)    CIFAR-10 via torchvision (downloads)

A fragment selects one side of the deterministic stratified split, so the same rows can be named
on the command line:  file.parquet#split=val&val_fraction=0.2&seed=0
"""
import os
from urllib.parse import parse_qs, urlsplit

from .cifar10 import load_cifar10
from .dataset import ImageDataset
from .errors import DataError
from .image_folder import load_image_folder
from .parquet import load_parquet
from .split import stratified_split


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
        dataset = load_parquet(base, image_column, label_column, image_size, s3_endpoint_url)
    elif kind == "folder":
        dataset = load_image_folder(base, image_size)
    elif kind == "cifar10":
        parts = urlsplit(base)
        train = parse_qs(parts.query).get("train", ["true"])[0].lower() != "false"
        dataset = load_cifar10(parts.netloc + parts.path, train=train)
    else:
        raise DataError(f"{uri}: unknown data format '{format}'; valid: auto, parquet, folder, cifar10")
    return select_split(dataset, fragment) if fragment else dataset


def select_split(dataset: ImageDataset, fragment: str) -> ImageDataset:
    query = {key: values[-1] for key, values in parse_qs(fragment).items()}
    unknown = set(query) - {"split", "val_fraction", "seed"}
    if unknown or query.get("split") not in ("train", "val"):
        raise DataError(
            f"{dataset.source}#{fragment}: bad split selector; expected #split=train|val&val_fraction=F&seed=S"
        )
    train, val = stratified_split(dataset.labels, float(query.get("val_fraction", 0.1)), int(query.get("seed", 0)))
    return dataset.subset(train if query["split"] == "train" else val)
