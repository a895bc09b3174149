import os
import subprocess

import yaml
from conftest import BIN, ROOT


def sslab(*args, cwd=ROOT):
    return subprocess.run([os.path.join(BIN, "sslab"), *args], capture_output=True, text=True, cwd=cwd)


def test_validate_prints_the_resolved_config():
    out = sslab("validate", "examples/quickstart.yaml", "--set", "train.epochs=3")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["train"]["epochs"] == 3 and resolved["eval"]["knn_temperature"] == 0.1
    assert resolved["model"]["projection_dim"] == 64 and resolved["tracking"]["uri"] == "sqlite:///mlflow.db"


def test_validate_reports_errors_with_position_and_exit_status_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  uri: cifar10://r\nmodel:\n  backbone: resnet50\n")
    out = sslab("validate", str(bad))
    assert out.returncode == 2
    assert f"{bad}:5:3: model.backbone:" in out.stderr and "'small_convnet' or 'resnet18_cifar'" in out.stderr


def test_eval_of_a_missing_checkpoint_is_a_clear_error():
    out = sslab("eval", "nowhere.pt", "--train", "examples/data/cifar10_sample.parquet",
                "--test", "examples/data/cifar10_sample.parquet")
    assert out.returncode == 2 and "nowhere.pt: checkpoint not found" in out.stderr
