"""Image data sets stored as Parquet (an image-bytes column and a label column), local or on S3."""
import hashlib
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from workloads.data.dataset import ImageDataset
from workloads.data.decode import decode_images
from workloads.data.errors import DataError


def open_filesystem(uri: str, s3_endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Local path or s3://bucket/key. S3 credentials come the AWS way (env, profile, instance role)."""
    if uri.startswith("s3://"):
        endpoint = s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {"endpoint_override": endpoint} if endpoint else {}
        if endpoint and endpoint.startswith("http://"):
            options["scheme"] = "http"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        return pafs.S3FileSystem(**options), uri.removeprefix("s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def open_parquet(uri: str, columns: list[str], s3_endpoint_url: str | None = None
                 ) -> tuple[pafs.FileSystem, str, pa.Schema]:
    """The file's filesystem, path and schema, once it is known to exist, to be Parquet and to hold
    `columns`; a DataError naming the file and what would be valid otherwise."""
    filesystem, path = open_filesystem(uri, s3_endpoint_url)
    wanted = " and ".join(f"'{c}'" for c in columns)
    try:
        info = filesystem.get_file_info(path)
    except OSError as error:
        raise DataError(f"{uri}: cannot reach the file ({error}); check the endpoint (data.s3_endpoint_url or "
                        "AWS_ENDPOINT_URL) and the AWS credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: no such file; expected a Parquet file with columns {wanted}")
    if info.type == pafs.FileType.Directory:
        raise DataError(f"{uri}: is a folder, read as Parquet (it ends in .parquet, or data.format says so); "
                        f"expected a Parquet file with columns {wanted}, or an image folder ROOT/<class>/<image>")
    try:
        schema = pq.read_schema(path, filesystem=filesystem)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"{uri}: cannot read as Parquet ({error}); expected a Parquet file with columns {wanted}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{uri}: missing column {' and '.join(repr(c) for c in missing)}; the file has columns "
                        f"{schema.names} (set data.image_column / data.label_column to the image bytes and the "
                        "integer class label)")
    return filesystem, path, schema


def check_labels(uri: str, column: pa.ChunkedArray, label_column: str, classes: list[str] | None) -> torch.Tensor:
    """The labels as int64, once every row has one and it is a class index; DataError naming the row otherwise."""
    if len(column) == 0:
        raise DataError(f"{uri}: the data set is empty (0 rows); at least one labelled image is required")
    if column.null_count:
        row = column.to_pylist().index(None)
        raise DataError(f"{uri}: row {row}: label is null; every row needs an integer label in '{label_column}'")
    if not pa.types.is_integer(column.type):
        raise DataError(f"{uri}: label column '{label_column}' has type {column.type}; expected integer class indices "
                        "0..C-1")
    labels = torch.from_numpy(column.to_numpy().astype("int64"))
    num_classes = len(classes) if classes else int(labels.max()) + 1
    bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if len(bad):
        row = int(bad[0])
        known = f"the schema's {num_classes} classes" if classes else "class indices"
        raise DataError(f"{uri}: row {row}: label {int(labels[row])} is out of range; valid labels are "
                        f"0..{num_classes - 1} ({known})")
    return labels


def _classes(schema: pa.Schema) -> list[str] | None:
    metadata = schema.metadata or {}
    return metadata[b"classes"].decode().split(",") if b"classes" in metadata else None


def _read(uri: str, filesystem, path: str, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, filesystem=filesystem, columns=columns)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"{uri}: cannot read columns {columns} as Parquet ({error})") from None


def load_parquet(
    uri: str,
    image_column: str = "image",
    label_column: str = "label",
    image_size: int | None = None,
    s3_endpoint_url: str | None = None,
) -> ImageDataset:
    filesystem, path, schema = open_parquet(uri, [image_column, label_column], s3_endpoint_url)
    table = _read(uri, filesystem, path, [image_column, label_column])
    classes = _classes(schema)
    labels = check_labels(uri, table.column(label_column), label_column, classes)
    encoded = table.column(image_column).to_pylist()
    num_classes = len(classes) if classes else int(labels.max()) + 1
    digest = hashlib.sha256()
    for data in encoded:
        digest.update(len(data or b"").to_bytes(8, "little"))
        digest.update(data or b"")
    digest.update(labels.numpy().tobytes())
    images = decode_images(encoded, uri, image_size)
    return ImageDataset(images, labels, classes or [str(c) for c in range(num_classes)], uri, digest.hexdigest())


def load_parquet_labels(uri: str, label_column: str = "label", s3_endpoint_url: str | None = None,
                        image_column: str | None = None) -> tuple[torch.Tensor, list[str] | None]:
    """The label column alone (checked as load_parquet checks it) and the schema's class names, images not
    read; image_column: that column must exist too."""
    filesystem, path, schema = open_parquet(uri, [c for c in (image_column, label_column) if c], s3_endpoint_url)
    classes = _classes(schema)
    return check_labels(uri, _read(uri, filesystem, path, [label_column]).column(label_column), label_column,
                        classes), classes
