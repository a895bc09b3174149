import pytest
from conftest import ROOT

from orchestrator.config.loader import ConfigError, load_config

QUICKSTART = f"{ROOT}/examples/quickstart.yaml"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_quickstart_resolves_with_defaults(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(QUICKSTART)
    assert config.workload.loss == "nt_xent" and config.train.batch_size == 256
    assert config.tracking.uri == "sqlite:///mlflow.db" and config.resources.workers == 1


def test_set_overrides_parse_yaml_values(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(QUICKSTART, ["search=null", "train.epochs=3", "workload.loss=triplet", "augment.crop_scale=[0.5, 1.0]"])
    assert config.train.epochs == 3 and config.workload.loss == "triplet" and config.augment.crop_scale == (0.5, 1.0)


def test_unknown_key_names_path_position_and_valid_keys(tmp_path):
    path = write(tmp_path, "name: x\ndata:\n  uri: cifar10://root\ntrain:\n  epochs: 2\n  epocs: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f"{path}:6:3: train.epocs: unknown key" in message and "epochs" in message


def test_wrong_type_and_range_are_all_reported(tmp_path):
    text = "name: x\ndata:\n  uri: cifar10://root\ntrain:\n  epochs: zero\n  lr: -1\nworkload:\n  loss: simclr\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert "3 config error(s)" in message
    assert ":5:3: train.epochs: Input should be a valid integer" in message
    assert ":6:3: train.lr: Input should be greater than 0" in message
    assert ":8:3: workload.loss:" in message and "'nt_xent'" in message and "'simclr'" in message


def test_impossible_range_and_warmup(tmp_path):
    text = "name: x\ndata:\n  uri: cifar10://r\naugment:\n  crop_scale: [0.9, 0.1]\ntrain:\n  epochs: 2\n  warmup_epochs: 2\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert "augment.crop_scale" in str(error.value) and "0 < min <= max <= 1" in str(error.value)
    assert "warmup_epochs (2) must be less than epochs (2)" in str(error.value)


def test_missing_section_and_missing_data_file(tmp_path):
    with pytest.raises(ConfigError, match=r"data: Field required"):
        load_config(write(tmp_path, "name: x\n"))
    with pytest.raises(ConfigError, match=r"data.uri: no such file or directory: 'nowhere.parquet'"):
        load_config(write(tmp_path, "name: x\ndata:\n  uri: nowhere.parquet\n"))


def test_bad_override_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"expected KEY.PATH=VALUE"):
        load_config(QUICKSTART, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match=r"--set: train.batch_size"):
        load_config(QUICKSTART, ["train.batch_size=1"])


@pytest.mark.parametrize("overrides,message", [
    (["bank.shuffle_bn=split"], "bank.shuffle_bn 'split' is for the MoCo key encoder of a bank"),
    (["bank.mode=queue", "workload.loss=info_nce", "bank.shuffle_bn=shuffle"],
     "on one worker use bank.shuffle_bn: split"),
    (["bank.mode=queue", "workload.loss=info_nce", "bank.shuffle_bn=shuffle", "resources.workers=2"],
     "set model.sync_batchnorm: false, or bank.shuffle_bn: none"),
    (["bank.mode=queue", "workload.loss=info_nce", "bank.shuffle_bn=split", "bank.bn_splits=6"],
     r"bank.bn_splits \(6\) must divide each worker's batch \(256"),
])
def test_key_batchnorm_settings_that_cannot_work_are_refused(monkeypatch, overrides, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=message):
        load_config(QUICKSTART, ["search=null", *overrides])


def test_key_batchnorm_settings_that_work_resolve(monkeypatch):
    monkeypatch.chdir(ROOT)
    bank = ["search=null", "bank.mode=queue", "workload.loss=info_nce"]
    assert load_config(QUICKSTART, [*bank, "bank.shuffle_bn=split"]).bank.bn_splits == 8
    config = load_config(QUICKSTART, [*bank, "bank.shuffle_bn=shuffle", "resources.workers=2",
                                      "model.sync_batchnorm=false"])
    assert config.bank.shuffle_bn == "shuffle" and config.train.global_negatives is True


def test_a_linear_probe_objective_without_the_probe_is_refused(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match="needs the linear probe, and eval.linear_probe is false"):
        load_config(QUICKSTART, ["search.objective=downstream/linear_top1", "eval.linear_probe=false"])
    assert load_config(QUICKSTART, ["search.objective=downstream/linear_top1"]).eval.linear_probe is True
