"""A catalogue of bad inputs: config and data (issue 14, deliverable 9; the table is docs/reliability.md, "Bad inputs").

Each case ends in exit status 2, a message that names the key, file or row and what would be valid,
no traceback, and no MLflow run left RUNNING. Where the input can be checked up front, the error
comes before any work: no Ray started in this process, no MLflow store or Ray storage created.
Most cases call sslab.cli.main() in this process (a bare exception escaping it fails the test); one
case per group runs `python -m sslab` as a real process, for the real exit status and stderr.
"""
import pyarrow as pa
import pytest

pytest.register_assert_rewrite("bad_input_helpers")  # its assertions explain themselves too
from bad_input_helpers import (  # noqa: E402
    SEARCH,
    assert_no_work,
    assert_says,
    fails,
    sslab_process,
    write_parquet,
)

pytest_plugins = ["bad_input_helpers"]  # its fixtures: sample, project, encoder

# ---- config: keys, types, ranges, combinations, YAML, --set, the search block ----------------------------

CONFIG_CASES = [
    # id, command, patch (dict) or text (str), --set overrides, fragments of the message
    ("unknown-top-level-key", "train", {"trian": {"epochs": 2}}, [],
     ["trian: unknown key (did you mean 'train'?)", "valid keys here: augment, bank, data"]),
    ("misspelled-nested-key", "train", {"train": {"epocs": 2}}, [],
     ["train.epocs: unknown key (did you mean 'epochs'?)", "valid keys here: batch_size, channels_last, compile, device, epochs"]),
    ("misspelled-workload-key", "train", {"workload": {"kind": "rotation", "hiden": 8}}, [],
     ["workload.hiden: unknown key (did you mean 'hidden'?) for workload kind 'rotation'"]),
    ("misspelled-search-key", "sweep", {"search": {**SEARCH, "n_trails": 2}}, [],
     ["search.n_trails: unknown key (did you mean 'n_trials'?)"]),
    ("key-of-another-workload-kind", "train", {"workload": {"kind": "rotation", "temperature": 0.1}}, [],
     ["workload.temperature: unknown key for workload kind 'rotation'", "valid keys: hidden, kind"]),
    ("wrong-type-int", "train", {"train": {"epochs": "ten"}}, [],
     ["train.epochs: Input should be a valid integer", "(got 'ten')"]),
    ("wrong-type-section", "train", {"train": 5}, [], ["train: Input should be a valid dictionary", "(got 5)"]),
    ("wrong-type-bool", "train", {"eval": {"linear_probe": "maybe"}}, [], ["eval.linear_probe: Input should be a valid boolean"]),
    ("wrong-type-list-for-string", "train", {"data": {"uri": ["a", "b"]}}, [], ["data.uri: Input should be a valid string"]),
    ("out-of-range-lr", "train", {"train": {"lr": -1}}, [], ["train.lr: Input should be greater than 0", "(got -1)"]),
    ("out-of-range-fraction", "train", {"data": {"val_fraction": 1.5}}, [], ["data.val_fraction: Input should be less than 1"]),
    ("out-of-range-workers", "train", {"resources": {"workers": 0}}, [],
     ["resources.workers: Input should be greater than or equal to 1"]),
    ("bad-choice", "train", {"model": {"backbone": "resnet50"}}, [],
     ["model.backbone: Input should be 'small_convnet' or 'resnet18_cifar'", "(got 'resnet50')"]),
    ("bad-workload-kind", "train", {"workload": {"kind": "simclr"}}, [],
     ["workload: workload.kind must be one of: contrastive, rotation"]),
    ("bad-name", "train", {"name": "my run"}, [], ["name: String should match pattern '^[A-Za-z0-9_.\\-]+$'"]),
    ("missing-section", "train", {"data": None}, [], ["data: Field required"]),
    ("batch-not-divisible-by-workers", "train", {"train": {"batch_size": 30}, "resources": {"workers": 4}}, [],
     ["train.batch_size (30) must be a multiple of resources.workers (4)"]),
    ("warmup-not-below-epochs", "train", {"train": {"warmup_epochs": 1}}, [],
     ["warmup_epochs (1) must be less than epochs (1)"]),
    ("splits-leave-no-training-data", "train", {"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, [],
     ["data.val_fraction (0.6) + data.test_fraction (0.5) must be below 1"]),
    ("two-test-sets", "train", {"data": {"test_uri": "data.parquet"}}, [],
     ["data.test_fraction (0.1) and data.test_uri ('data.parquet') both name a test set"]),
    ("bank-loss-mismatch", "train", {"bank": {"mode": "queue", "size": 64}, "workload": {"loss": "triplet"}}, [],
     ["workload.loss 'triplet' cannot use bank.negatives 'exact'; valid losses: info_nce"]),
    ("crop-scale-reversed", "train", {"augment": {"crop_scale": [0.9, 0.1]}}, [],
     ["augment.crop_scale", "must satisfy 0 < min <= max <= 1, got [0.9, 0.1]"]),
    ("key-bn-without-bank", "train", {"bank": {"shuffle_bn": "split"}}, [],
     ["bank.shuffle_bn 'split' is for the MoCo key encoder of a bank", "set bank.mode (queue or instance)"]),
    ("probe-objective-without-probe", "sweep", {"search": {**SEARCH, "objective": "downstream/linear_top1"}}, [],
     ["needs the linear probe, and eval.linear_probe is false"]),
    ("yaml-unclosed-bracket", "train", "name: [unclosed\ndata: {uri: data.parquet}\n", [],
     ["c.yaml:2:5: not valid YAML", "expected ',' or ']'"]),
    ("yaml-bad-indentation", "train", "name: x\ndata:\n  uri: data.parquet\n   val_fraction: 0.2\n", [],
     ["c.yaml:4:16: not valid YAML", "mapping values are not allowed here"]),
    ("yaml-tab-indentation", "train", "name: x\ndata:\n\turi: data.parquet\n", [],
     ["c.yaml:3:1: not valid YAML", "found character '\\t' that cannot start any token"]),
    ("yaml-duplicate-key", "train", "name: x\ndata:\n  uri: data.parquet\n  uri: other.parquet\n", [],
     ["c.yaml:4:3: data.uri: the key appears twice in its mapping"]),
    ("empty-file", "train", "", [], ["c.yaml: the config file is empty", "expected a mapping of sections"]),
    ("comments-only", "train", "# nothing yet\n", [], ["c.yaml: the config file is empty"]),
    ("top-level-list", "train", "- name: x\n- data: y\n", [], ["c.yaml: the top level must be a mapping of sections"]),
    ("top-level-scalar", "train", "just a string\n", [], ["c.yaml: the top level must be a mapping of sections"]),
    ("set-without-equals", "train", {}, ["train.epochs"],
     ["--set 'train.epochs': expected KEY.PATH=VALUE, e.g. --set train.epochs=5"]),
    ("set-empty-key", "train", {}, ["=5"], ["--set '=5': expected KEY.PATH=VALUE"]),
    ("set-unknown-section", "train", {}, ["trian.epochs=3"], ["--set: trian: unknown key (did you mean 'train'?)"]),
    ("set-unknown-key", "train", {}, ["train.epocs=3"], ["--set: train.epocs: unknown key (did you mean 'epochs'?)"]),
    ("set-into-a-value", "train", {}, ["name.first=x"], ["--set 'name.first=x': 'name' is not a section"]),
    ("set-value-not-yaml", "train", {}, ["train.epochs=[1"],
     ["--set 'train.epochs=[1': the value is not valid YAML", "write lists as [a, b]"]),
    ("set-out-of-range", "train", {}, ["train.batch_size=1"], ["--set: train.batch_size: Input should be greater than or equal to 2"]),
    ("sweep-without-search", "sweep", {}, [], ["search: a sweep needs a search block"]),
    ("search-unknown-space-key", "sweep",
     {"search": {**SEARCH, "space": {"workload.temprature": {"type": "float", "low": 0.1, "high": 1.0}}}}, [],
     ["search.space.workload.temprature", "workload.temperature"]),
    ("search-bad-space-type", "sweep", {"search": {**SEARCH, "space": {"train.lr": {"type": "gaussian"}}}}, [],
     ["search.space.train.lr.type: Input should be 'float', 'int' or 'categorical'", "(got 'gaussian')"]),
    ("search-low-above-high", "sweep",
     {"search": {**SEARCH, "space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.001}}}}, [],
     ["search.space.train.lr", "low (0.1) must be less than high (0.001)"]),
    ("search-log-from-zero", "sweep",
     {"search": {**SEARCH, "space": {"train.lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}}}, [],
     ["search.space.train.lr", "low (0) must be > 0 with log: true"]),
    ("search-no-budget", "sweep", {"search": {**SEARCH, "n_trials": None}}, [],
     ["n_trials / timeout_minutes: set at least one"]),
    ("search-unknown-objective", "sweep", {"search": {**SEARCH, "objective": "accuracy"}}, [],
     ["search.objective", "'accuracy' is not a metric sslab records; use one of train/loss"]),
    ("search-bad-storage-url", "sweep", {"search": {**SEARCH, "storage": "nosuchdb://host/x"}}, [],
     ["search.storage", "is neither journal:PATH nor a database URL"]),
]


@pytest.mark.parametrize("command,config,overrides,fragments",
                         [pytest.param(*case[1:], id=case[0]) for case in CONFIG_CASES])
def test_bad_config(project, capsys, command, config, overrides, fragments):
    path = project(config) if isinstance(config, dict) else project(text=config)
    if command == "sweep" and isinstance(config, dict) and "search" not in config and config:
        path = project({**config, "search": SEARCH})
    message = fails(capsys, command, path, *[arg for o in overrides for arg in ("--set", o)])
    assert_says(message, *fragments)
    assert_no_work(project.dir)


def test_a_missing_config_file(project, capsys):
    message = fails(capsys, "sweep", "nowhere.yaml")
    assert_says(message, "nowhere.yaml: config file not found")
    assert_no_work(project.dir)


def test_a_config_error_as_a_real_process(project):
    out = sslab_process("sweep", project(text="name: [unclosed\n"), cwd=project.dir)
    assert_says(out.stderr, "sslab sweep: error: c.yaml:2:1: not valid YAML")
    assert_no_work(project.dir)


# ---- data: files, columns, rows, sizes (checked up front from the labels alone) -----------------------------

def _labels(table: pa.Table, changes: dict) -> list:
    labels = table.column("label").to_pylist()
    for row, value in changes.items():
        labels[row] = value
    return labels


DATA_CASES = [
    # id, make(folder, table) -> {data keys}, fragments of the message
    ("missing-file", lambda d, t: {"uri": "nowhere.parquet"},
     ["data.uri: no such file or directory: 'nowhere.parquet'"]),
    ("not-parquet", lambda d, t: {"uri": (d / "x.parquet").write_bytes(b"image,label\n1,2\n") and "x.parquet"},
     ["x.parquet: cannot read as Parquet", "expected a Parquet file with columns 'image' and 'label'"]),
    ("unknown-format", lambda d, t: {"uri": (d / "x.csv").write_text("image,label\n") and "x.csv"},
     ["x.csv: unknown data format; expected a .parquet file, an s3:// URI, an image folder or cifar10://ROOT"]),
    ("missing-label-column", lambda d, t: {"uri": write_parquet(d / "x.parquet", t, label=None)},
     ["x.parquet: missing column 'label'; the file has columns ['image', 'path']", "set data.image_column / data.label_column"]),
    ("missing-image-column", lambda d, t: {"uri": write_parquet(d / "x.parquet", t, image=None)},
     ["x.parquet: missing column 'image'; the file has columns ['label', 'path']"]),
    ("misnamed-label-column", lambda d, t: {"uri": "data.parquet", "label_column": "class"},
     ["data.parquet: missing column 'class'; the file has columns ['image', 'label', 'path']"]),
    ("label-out-of-range", lambda d, t: {"uri": write_parquet(d / "x.parquet", t, label=_labels(t, {7: 12}))},
     ["x.parquet: row 7: label 12 is out of range; valid labels are 0..9 (the schema's 10 classes)"]),
    ("negative-label", lambda d, t: {"uri": write_parquet(d / "x.parquet", t, label=_labels(t, {3: -1}))},
     ["x.parquet: row 3: label -1 is out of range; valid labels are 0..9"]),
    ("null-label", lambda d, t: {"uri": write_parquet(d / "x.parquet", t, label=_labels(t, {4: None}))},
     ["x.parquet: row 4: label is null; every row needs an integer label in 'label'"]),
    ("float-labels", lambda d, t: {"uri": write_parquet(d / "x.parquet", t, label=pa.array(
        [float(v) for v in t.column("label").to_pylist()]))},
     ["x.parquet: label column 'label' has type double; expected integer class indices"]),
    ("empty-data-set", lambda d, t: {"uri": write_parquet(d / "x.parquet", t.slice(0, 0))},
     ["x.parquet: the data set is empty (0 rows); at least one labelled image is required"]),
    ("fewer-images-than-a-batch", lambda d, t: {"test_fraction": 0, "uri": write_parquet(  # 3 images per class
        d / "x.parquet", t.take([c * 20 + i for c in range(10) for i in range(3)]))},
     ["train.batch_size (32) is larger than the training split of data.uri: 20 of its 30 images",
      "Valid: train.batch_size <= 20"]),
    ("class-too-small-to-split", lambda d, t: {"uri": write_parquet(d / "x.parquet", t.slice(0, 21))},
     ["leave class 'automobile' (1 images)", "impossible: a class of 1 image cannot be split"]),
    ("bad-split-fragment", lambda d, t: {"uri": "data.parquet#split=all"},
     ["bad split selector; expected #split=train|val|test"]),
    ("missing-test-file", lambda d, t: {"test_uri": "nowhere.parquet", "test_fraction": 0},
     ["data.test_uri: no such file or directory: 'nowhere.parquet'"]),
    ("test-labels-beyond-the-data", lambda d, t: {"test_fraction": 0, "test_uri": write_parquet(
        d / "test.parquet", t.replace_schema_metadata(None), label=_labels(t, {0: 10}))},
     ["data.test_uri", "label 10 is out of range; data.uri has 10 classes (valid labels 0..9)"]),
]


@pytest.mark.parametrize("make,fragments", [pytest.param(*case[1:], id=case[0]) for case in DATA_CASES])
def test_bad_data(project, capsys, sample, make, fragments):
    path = project({"data": make(project.dir, sample)})
    message = fails(capsys, "train", path)
    assert_says(message, *fragments)
    assert_no_work(project.dir)


def test_a_search_space_batch_larger_than_the_data(project, capsys):
    space = {"train.batch_size": {"type": "categorical", "choices": [32, 256]}}
    message = fails(capsys, "sweep", project({"search": {**SEARCH, "space": space}}))
    assert_says(message, "search.space.train.batch_size (256) is larger than the training split of data.uri: 140")
    assert_no_work(project.dir)


@pytest.mark.parametrize("image,fragments", [
    pytest.param(b"GIF89a but not really", ["x.parquet: row 5: cannot decode image", "expected JPEG, PNG, GIF or WebP"],
                 id="undecodable-image"),
    pytest.param(b"", ["x.parquet: row 5: image is empty; expected encoded image bytes"], id="empty-image-bytes"),
])
def test_images_that_do_not_decode_name_their_row(project, capsys, sample, encoder, image, fragments):
    """Not checkable from the labels: found where images are decoded (`sslab eval` here, in this process;
    in `sslab train` by the worker, whose DataError the driver raises as itself)."""
    images = sample.column("image").to_pylist()
    images[5] = image
    bad = write_parquet(project.dir / "x.parquet", sample, image=images)
    message = fails(capsys, "eval", encoder, "--train", bad, "--test", "data.parquet", "--no-linear-probe")
    assert_says(message, *fragments)


@pytest.mark.slow
def test_a_data_error_as_a_real_process(project, sample):
    path = project({"data": {"uri": write_parquet(project.dir / "x.parquet", sample, label=None)}})
    out = sslab_process("train", path, cwd=project.dir)
    assert_says(out.stderr, "sslab train: error: c.yaml: ", "x.parquet: missing column 'label'")
    assert_no_work(project.dir)


