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


def load_parquet(
    uri: str,
    image_column: str = "image",
    label_column: str = "label",
    image_size: int | None = None,
    s3_endpoint_url: str | None = None,
) -> ImageDataset:
    filesystem, path = open_filesystem(uri, s3_endpoint_url)
    try:
        found = filesystem.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as error:
        raise DataError(f"{uri}: cannot reach the file ({error}); check the endpoint and AWS credentials") from None
    if not found:
        raise DataError(f"{uri}: no such file; expected a Parquet file with columns '{image_column}' and '{label_column}'")
    try:
        table = pq.read_table(path, filesystem=filesystem, columns=[image_column, label_column])
    except (OSError, pa.ArrowInvalid) as error:
        message = str(error)
        if "No match for FieldRef" in message or "not found" in message.lower() and "column" in message.lower():
            schema = pq.read_schema(path, filesystem=filesystem)
            raise DataError(
                f"{uri}: missing column; needs image column '{image_column}' and label column '{label_column}', "
                f"the file has {schema.names} (set data.image_column / data.label_column)"
            ) from None
        raise DataError(f"{uri}: cannot read as Parquet ({message})") from None
    if table.num_rows == 0:
        raise DataError(f"{uri}: the data set is empty (0 rows); at least one image is required")
    encoded = table.column(image_column).to_pylist()
    raw_labels = table.column(label_column)
    if raw_labels.null_count:
        row = raw_labels.to_pylist().index(None)
        raise DataError(f"{uri}: row {row}: label is null; every row needs an integer label")
    if not pa.types.is_integer(raw_labels.type):
        raise DataError(f"{uri}: label column '{label_column}' has type {raw_labels.type}; expected integer class indices")
    labels = torch.from_numpy(raw_labels.to_numpy().astype("int64"))
    metadata = pq.read_schema(path, filesystem=filesystem).metadata or {}
    classes = metadata[b"classes"].decode().split(",") if b"classes" in metadata else None
    num_classes = len(classes) if classes else int(labels.max()) + 1
    bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{uri}: row {row}: label {int(labels[row])} is out of range; valid labels are 0..{num_classes - 1}")
    digest = hashlib.sha256()
    for data in encoded:
        digest.update(len(data or b"").to_bytes(8, "little"))
        digest.update(data or b"")
    digest.update(labels.numpy().tobytes())
    images = decode_images(encoded, uri, image_size)
    return ImageDataset(images, labels, classes or [str(c) for c in range(num_classes)], uri, digest.hexdigest())


def load_parquet_labels(uri: str, label_column: str = "label",
                        s3_endpoint_url: str | None = None) -> tuple[torch.Tensor, list[str] | None]:
    """The label column alone (and the class names of the schema metadata), images not read."""
    filesystem, path = open_filesystem(uri, s3_endpoint_url)
    try:
        table = pq.read_table(path, filesystem=filesystem, columns=[label_column])
        metadata = pq.read_schema(path, filesystem=filesystem).metadata or {}
    except FileNotFoundError:
        raise DataError(f"{uri}: no such file; expected a Parquet file with a label column '{label_column}'") from None
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"{uri}: cannot read the label column '{label_column}' ({error})") from None
    column = table.column(label_column)
    if column.null_count or not pa.types.is_integer(column.type):
        raise DataError(f"{uri}: label column '{label_column}' must hold integer class indices without nulls")
    classes = metadata[b"classes"].decode().split(",") if b"classes" in metadata else None
    return torch.from_numpy(column.to_numpy().astype("int64")), classes
