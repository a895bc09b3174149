"""The GPU recipe on the CPU: examples/cifar10_simclr_gpu.yaml through `sslab train`'s path (Ray Train, MLflow)
and through bench/gpu_recipe.py, a few steps at tiny sizes. torch.compile stays off here (minutes to
compile on a small CPU); its fallback is tested in test_training_step.py."""
import json
import os
import sys

import pytest
import torch
from conftest import ROOT
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import ConfigError, load_config
from orchestrator.training.run import run_training

sys.path.insert(0, ROOT)
from bench import gpu_recipe  # noqa: E402

EXAMPLE = os.path.join(ROOT, "examples", "cifar10_simclr_gpu.yaml")
# The CPU and tiny sizes; everything else (bf16, channels_last, the fused augmentation, SGD, warm-up +
# cosine, the held-out split) as the example has it.
ON_CPU = ["data.uri=examples/data/cifar10_sample.parquet", "resources.gpus_per_worker=0", "resources.cpus_per_worker=1",
          "train.device=cpu", "train.compile=false", "model.backbone=small_convnet", "model.width=8",
          "model.projection_hidden_dim=64", "train.batch_size=64", "train.epochs=2", "train.warmup_epochs=1"]


def test_the_example_is_the_recipe_it_says():
    config = load_config(EXAMPLE, [ON_CPU[0]])
    train = config.train
    assert (train.precision, train.channels_last, train.compile, config.augment.fused) == ("bf16", True, True, True)
    assert config.model.backbone == "resnet18_cifar" and train.batch_size >= 512 and train.warmup_epochs > 0
    assert config.data.test_fraction > 0 and config.resources.gpus_per_worker == 1


@pytest.mark.parametrize("overrides, message", [
    (["train.channels_last=maybe"], r"train.channels_last: Input should be 'auto', True or False"),
    (["train.compile=yes please"], r"train.compile: Input should be a valid boolean"),
    (["augment.fused=2"], r"augment.fused: Input should be a valid boolean"),
    (["bank.mode=queue", "workload.loss=info_nce"], r"train.compile compiles the in-batch contrastive step.*bank.mode 'queue'"),
])
def test_the_fast_path_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EXAMPLE, [ON_CPU[0], *overrides])


@pytest.mark.slow
def test_the_example_trains_on_the_cpu_through_sslab_train(ray_local, workdir):
    config = load_config(EXAMPLE, ON_CPU + ["train.max_minutes=0.01", "eval.knn_k=20",
                                            "eval.embedding_map_points=200", "name=gpu_recipe_cpu"])
    result = run_training(config)
    run = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["augment.fused"], params["train.precision"], params["train.channels_last"]) == ("True", "bf16", "True")
    metrics = run.data.metrics
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["test/knn_top1"] <= 1.0  # the held-out split's kNN, what the recipe reports


def test_bench_gpu_recipe_runs_every_part_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = gpu_recipe.read_config(EXAMPLE, ON_CPU + ["data.val_fraction=0.05", "data.test_fraction=0.2"])
    rows = gpu_recipe.run(config, torch.device("cpu"), limit=300, eval_every=1, log=lambda *a, **k: None)
    assert [r["epoch"] for r in rows] == [1, 2]  # scored after every epoch, up to train.epochs
    assert 0 < rows[0]["minutes"] < rows[1]["minutes"]
    for row in rows:
        assert 0.0 <= row["knn_top1"] <= 1.0 and row["images_per_s"] > 0 and row["loss"] == row["loss"]
    gpu_recipe.write(rows, {"device_name": "CPU"}, str(tmp_path))
    saved = json.loads((tmp_path / "gpu_recipe.json").read_text())
    assert saved["rows"] == rows and (tmp_path / "gpu_recipe.png").stat().st_size > 0
