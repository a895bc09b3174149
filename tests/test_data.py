import io
import os

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLE
from PIL import Image

from orchestrator.config.schema import SSLabConfig
from orchestrator.training.trial_eval import (
    SPLIT_KEYS,
    check_splits,
    data_record,
    load_splits,
)
from workloads.data import (
    CIFAR10,
    DataError,
    Normalization,
    load_images,
    load_labels,
    split_three_ways,
    stratified_split,
)


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


def test_three_way_split_is_stratified_seeded_disjoint_and_keeps_the_two_way_val():
    labels = torch.arange(10).repeat_interleave(50)
    train, val, test = split_three_ways(labels, 0.2, 0.1, seed=3)
    again = split_three_ways(labels, 0.2, 0.1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    assert not torch.equal(test, split_three_ways(labels, 0.2, 0.1, seed=4)[2])
    assert len(set(train.tolist()) | set(val.tolist()) | set(test.tolist())) == len(train) + len(val) + len(test) == 500
    assert labels[val].bincount().tolist() == [10] * 10 and labels[test].bincount().tolist() == [5] * 10
    assert labels[train].bincount().tolist() == [35] * 10
    two_train, two_val = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(two_val, val)  # adding a test split takes it from train, not from val
    assert torch.equal(two_train, torch.sort(torch.cat([train, test])).values)
    no_test = split_three_ways(labels, 0.2, 0.0, seed=3)
    assert torch.equal(no_test[0], two_train) and torch.equal(no_test[1], two_val) and len(no_test[2]) == 0


def test_a_class_too_small_for_three_splits_names_the_keys_the_class_and_what_is_valid():
    labels = torch.tensor([0] * 40 + [1] * 3)
    with pytest.raises(DataError) as error:
        split_three_ways(labels, 0.2, 0.1, seed=0, classes=["cat", "dog"], keys=SPLIT_KEYS)
    message = str(error.value)
    for part in ("data.val_fraction 0.2 and data.test_fraction 0.1", "class 'dog' (3 images)", "0 test images",
                 "at least one in each split", "smallest class has 3 images", "each above 0.167", "at least 6 images"):
        assert part in message, f"{part!r} not in {message}"
    with pytest.raises(DataError, match=r"data.val_fraction \(0.6\) \+ data.test_fraction \(0.5\) must be below 1"):
        split_three_ways(torch.arange(4).repeat(10), 0.6, 0.5, seed=0, keys=SPLIT_KEYS)
    train, val, test = split_three_ways(labels, 0.2, 0.4, seed=0)  # dog: 1 val, 1 test, 1 train
    assert (labels[train] == 1).sum() == (labels[val] == 1).sum() == (labels[test] == 1).sum() == 1


def test_split_selector_in_uri():
    val = load_images(SAMPLE + "#split=val&val_fraction=0.1&seed=0")
    train = load_images(SAMPLE + "#split=train&val_fraction=0.1&seed=0")
    assert len(val) == 500 and len(train) == 4500
    parts = [load_images(SAMPLE + f"#split={name}&val_fraction=0.2&test_fraction=0.1&seed=0")
             for name in ("train", "val", "test")]
    assert [len(p) for p in parts] == [3500, 1000, 500]
    labels = load_images(SAMPLE).labels
    expected = split_three_ways(labels, 0.2, 0.1, 0)
    full = load_images(SAMPLE)
    for part, indices in zip(parts, expected):
        assert torch.equal(part.images, full.images[indices])
    with pytest.raises(DataError, match="split=test needs test_fraction above 0"):
        load_images(SAMPLE + "#split=test&val_fraction=0.2")
    with pytest.raises(DataError, match="bad split selector"):
        load_images(SAMPLE + "#split=holdout")


def test_labels_are_read_without_the_images(tmp_path):
    labels, classes = load_labels(SAMPLE)
    assert torch.equal(labels, load_images(SAMPLE).labels) and classes[:2] == ["airplane", "automobile"]
    for name in ("cat", "dog"):
        os.makedirs(tmp_path / "tree" / name)
        for i in range(2 if name == "cat" else 1):
            (tmp_path / "tree" / name / f"{i}.png").write_bytes(b"not read")  # listing only
    labels, classes = load_labels(str(tmp_path / "tree"))
    assert labels.tolist() == [0, 0, 1] and classes == ["cat", "dog"]
    assert load_labels("cifar10://nowhere") is None


def test_normalization_is_measured_per_channel_on_the_given_images():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:2, 0] = 255  # red: half the pixels 1, half 0 -> mean 0.5, std 0.5
    images[:, 1] = 51  # green: constant 0.2 -> std 0 is kept finite (1)
    images[:, 2, 0] = 255  # blue: the top row of every image -> mean 0.5, std 0.5
    norm = Normalization.of_images(images)
    assert norm.mean == (0.5, 0.2, 0.5) and norm.std == (0.5, 1.0, 0.5)
    sample = load_images(SAMPLE).images
    measured = Normalization.of_images(sample, chunk=777)  # chunking does not change the sums
    pixels = sample.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    torch.testing.assert_close(torch.tensor(measured.mean, dtype=torch.float64), pixels.mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(measured.std, dtype=torch.float64), pixels.std(1, correction=0), atol=1e-6, rtol=0)
    assert measured != CIFAR10 and all(abs(a - b) < 0.02 for a, b in zip(measured.mean, CIFAR10.mean))  # a CIFAR sample
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(measured.to_unit(measured.normalize(x)), x)
    assert measured.params() == {"data_mean": ",".join(map(repr, measured.mean)), "data_std": ",".join(map(repr, measured.std))}
    assert Normalization.from_dict(measured.as_dict()) == measured
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalization((0.5, 0.5, 0.5), (0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="one value per channel"):
        Normalization((0.5, 0.5), (0.5, 0.5, 0.5))


def _config(tmp_path=None, **data) -> SSLabConfig:
    return SSLabConfig.model_validate({"name": "d", "seed": 0, "data": {"uri": SAMPLE, **data}})


def test_data_config_test_fraction_and_test_uri():
    assert (_config().data.val_fraction, _config().data.test_fraction) == (0.2, 0.1)
    official = _config(test_uri="cifar10://root?train=false").data
    assert official.test_fraction == 0.0  # the official test set replaces the fraction
    assert SSLabConfig.model_validate(_config(test_uri="x.parquet").model_dump()).data.test_fraction == 0.0
    assert _config(test_fraction=0).data.test_fraction == 0.0
    with pytest.raises(ValueError, match=r"data.val_fraction \(0.7\) \+ data.test_fraction \(0.3\) must be below 1"):
        _config(val_fraction=0.7, test_fraction=0.3)
    with pytest.raises(ValueError, match=r"data.test_fraction \(0.2\) and data.test_uri .* give one"):
        _config(test_fraction=0.2, test_uri="t.parquet")
    with pytest.raises(ValueError, match="test_fraction"):
        _config(test_fraction=-0.1)


def test_load_splits_three_ways_and_normalisation_from_train_only(tmp_path):
    splits = load_splits(_config())
    assert [len(splits.train), len(splits.val), len(splits.test)] == [3500, 1000, 500]
    assert splits.normalization == Normalization.of_images(splits.train.images)
    everything = Normalization.of_images(load_images(SAMPLE).images)
    assert splits.normalization != everything  # measured on train, not on val or test
    record = data_record(splits)
    assert record["sslab.data_hash"] == splits.train.content_hash and "sslab.test_data_hash" not in record
    assert record["sslab.data_mean"] == splits.normalization.params()["data_mean"]
    assert load_splits(_config(test_fraction=0)).test is None

    red, blue = jpeg("red"), jpeg("blue")
    test_path = write_parquet(tmp_path / "test.parquet", [red, blue, blue], [0, 1, 1])
    train_path = write_parquet(tmp_path / "train.parquet", [red] * 10 + [blue] * 10, [0] * 10 + [1] * 10)
    official = load_splits(_config(uri=train_path, test_uri=test_path, image_size=8))
    assert [len(official.train), len(official.val), len(official.test)] == [16, 4, 3]
    assert data_record(official)["sslab.test_data_hash"] == official.test.content_hash
    bad_test = write_parquet(tmp_path / "bad.parquet", [red, blue], [0, 2])
    with pytest.raises(DataError, match=r"data.test_uri .*bad.parquet: label 2 is out of range; data.uri has 2 classes"):
        check_splits(_config(uri=train_path, test_uri=bad_test))


def test_a_data_set_too_small_for_the_splits_fails_before_any_image_is_decoded(tmp_path):
    # the images are not even valid: check_splits reads only the labels
    path = write_parquet(tmp_path / "small.parquet", [b"x"] * 23, [0] * 20 + [1] * 3)
    with pytest.raises(DataError, match=r"data.val_fraction 0.2 and data.test_fraction 0.1 leave class '1' \(3 images\)"):
        check_splits(_config(uri=path))
    check_splits(_config(uri=path, val_fraction=0.34, test_fraction=0.34))  # 1 val, 1 test, 1 train in class 1
    with pytest.raises(DataError, match="data.val_fraction 0.2 and data.test_fraction 0.1 leave class '1'"):
        load_splits(_config(uri=write_parquet(tmp_path / "ok.parquet", [jpeg("red")] * 23, [0] * 20 + [1] * 3)))


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
