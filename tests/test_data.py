import io
import os

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from workloads.data import DataError, load_images, stratified_split

from conftest import SAMPLE


def jpeg(color, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_parquet(path, images, labels, metadata=None, image_column="image"):
    table = pa.table({image_column: pa.array(images, pa.binary()), "label": pa.array(labels, pa.int16())})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path)
    return str(path)


def test_bundled_sample_decodes_once_with_classes_and_hash():
    data = load_images(SAMPLE)
    assert data.images.shape == (5000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.bincount().tolist() == [500] * 10
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    assert len(data.content_hash) == 64 and data.content_hash == load_images(SAMPLE).content_hash


def test_content_hash_changes_with_content(tmp_path):
    a = write_parquet(tmp_path / "a.parquet", [jpeg("red"), jpeg("blue")], [0, 1])
    b = write_parquet(tmp_path / "b.parquet", [jpeg("red"), jpeg("blue")], [1, 0])
    assert load_images(a).content_hash != load_images(b).content_hash


def test_stratified_split_is_deterministic_disjoint_and_balanced():
    labels = torch.arange(10).repeat_interleave(50)
    train, val = stratified_split(labels, 0.2, seed=3)
    again_train, again_val = stratified_split(labels, 0.2, seed=3)
    other_train, _ = stratified_split(labels, 0.2, seed=4)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(train, other_train)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 500
    assert labels[val].bincount().tolist() == [10] * 10


def test_split_selector_in_uri():
    val = load_images(SAMPLE + "#split=val&val_fraction=0.1&seed=0")
    train = load_images(SAMPLE + "#split=train&val_fraction=0.1&seed=0")
    assert len(val) == 500 and len(train) == 4500


def test_missing_column_names_file_and_columns(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [jpeg("red")], [0], image_column="pixels")
    with pytest.raises(DataError, match=r"x\.parquet: missing column.*'image'.*pixels"):
        load_images(path)


def test_undecodable_image_names_row(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [jpeg("red"), b"not an image"], [0, 1])
    with pytest.raises(DataError, match=r"x\.parquet: row 1: cannot decode image"):
        load_images(path)


def test_label_out_of_range_names_row(tmp_path):
    meta = {b"classes": b"a,b"}
    path = write_parquet(tmp_path / "x.parquet", [jpeg("red"), jpeg("red"), jpeg("red")], [0, 1, 2], meta)
    with pytest.raises(DataError, match=r"row 2: label 2 is out of range; valid labels are 0\.\.1"):
        load_images(path)
    negative = write_parquet(tmp_path / "n.parquet", [jpeg("red"), jpeg("red")], [0, -1])
    with pytest.raises(DataError, match=r"row 1: label -1 is out of range"):
        load_images(negative)


def test_empty_and_unreadable_files(tmp_path):
    empty = write_parquet(tmp_path / "e.parquet", [], [])
    with pytest.raises(DataError, match=r"e\.parquet: the data set is empty"):
        load_images(empty)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"g\.parquet: cannot read as Parquet"):
        load_images(str(garbage))
    with pytest.raises(DataError, match=r"no such file"):
        load_images(str(tmp_path / "missing.parquet"))


def test_image_folder_tree_and_bad_file(tmp_path):
    for name, color in (("cat", "red"), ("dog", "blue")):
        os.makedirs(tmp_path / "tree" / name)
        for i in range(3):
            Image.new("RGB", (12, 10), color).save(tmp_path / "tree" / name / f"{i}.png")
    data = load_images(str(tmp_path / "tree"), image_size=8)
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images.shape == (6, 3, 8, 8)
    assert data.images[0, 0].float().mean() > 200 and data.images[3, 2].float().mean() > 200  # red, blue
    (tmp_path / "tree" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match=r"broken\.jpg: cannot decode image"):
        load_images(str(tmp_path / "tree"))


def test_parquet_from_s3_compatible_store(s3_server):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="datasets")
    with open(SAMPLE, "rb") as handle:
        s3.put_object(Bucket="datasets", Key="cifar/sample.parquet", Body=handle.read())
    remote = load_images("s3://datasets/cifar/sample.parquet", s3_endpoint_url=s3_server)
    local = load_images(SAMPLE)
    assert torch.equal(remote.images, local.images) and remote.content_hash == local.content_hash
    with pytest.raises(DataError, match=r"s3://datasets/missing\.parquet"):
        load_images("s3://datasets/missing.parquet", s3_endpoint_url=s3_server)
