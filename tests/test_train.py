"""`sslab train` end to end: Ray Train, the MLflow record on a real tracking server, `sslab eval`."""
import json
import os
import subprocess

import pyarrow.parquet as pq
import pytest
from conftest import BIN, ROOT
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import load_config
from orchestrator.training.run import run_training

TINY = ["train.epochs=2", "train.batch_size=128", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.progress=false", "data.val_fraction=0.1"]


@pytest.mark.slow
def test_train_leaves_finished_run_with_metrics_artifacts_and_params(ray_local, workdir, small_data, mlflow_server):
    config = load_config(f"{ROOT}/examples/quickstart.yaml", TINY + [f"tracking.uri={mlflow_server}", "name=tiny"])
    result = run_training(config)
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["sslab.kind"] == "train"
    params = run.data.params
    assert params["loss"] == "nt_xent" and params["temperature"] == "0.2" and params["batch_size"] == "128"
    assert params["backbone"] == "small_convnet" and params["epochs"] == "2" and len(params["data_hash"]) == 64
    # the MLflow UI: the experiment opens on its runs, the Dataset column names the data and its hash
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [data_input] = run.inputs.dataset_inputs
    assert data_input.dataset.digest == params["data_hash"][:36]  # MLflow caps a digest at 36 characters
    assert json.loads(data_input.dataset.profile)["data_hash"] == params["data_hash"]
    assert data_input.dataset.name == "cifar10_sample" and data_input.dataset.source_type == "local"
    assert json.loads(data_input.dataset.source)["uri"] == params["data_uri"]
    assert {t.key: t.value for t in data_input.tags}["mlflow.data.context"] == "train"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1]
    for name in ("train/lr", "train/images_per_s"):
        assert len(client.get_metric_history(result.run_id, name)) == 2
    metrics = run.data.metrics
    for name in ("downstream/knn_top1", "downstream/linear_top1"):
        assert 0.0 <= metrics[name] <= 1.0
    assert 0.0 < metrics["repr/alignment"] <= 4.0 and metrics["repr/uniformity"] < 0.0
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"encoder.pt", "embedding_map.png", "config.yaml", "resolved_config.yaml"} <= artifacts

    local = client.download_artifacts(result.run_id, "encoder.pt", str(workdir))
    sample = "examples/data/cifar10_sample.parquet"
    out = subprocess.run(
        [os.path.join(BIN, "sslab"), "eval", local, "--train", f"{sample}#split=train&val_fraction=0.1&test_fraction=0.1&seed=0",
         "--test", f"{sample}#split=val&val_fraction=0.1&test_fraction=0.1&seed=0"],
        capture_output=True, text=True, check=True,
    )
    scores = json.loads(out.stdout)
    assert scores["downstream/knn_top1"] == pytest.approx(metrics["downstream/knn_top1"], abs=1e-9)
    assert scores["downstream/linear_top1"] == pytest.approx(metrics["downstream/linear_top1"], abs=1e-9)


@pytest.mark.slow
def test_failure_in_a_worker_leaves_failed_run_with_the_error(ray_local, workdir, small_data, tmp_path):
    table = pq.read_table("examples/data/cifar10_sample.parquet")
    images = table.column("image").to_pylist()
    images[7] = b"corrupt"
    bad = table.set_column(0, "image", __import__("pyarrow").array(images, __import__("pyarrow").binary()))
    pq.write_table(bad, "bad.parquet")
    config = load_config(f"{ROOT}/examples/quickstart.yaml", TINY + ["data.uri=bad.parquet", "name=broken"])
    with pytest.raises(Exception):
        run_training(config)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("broken")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "bad.parquet: row 7: cannot decode image" in run.data.tags["sslab.error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not [p for p in __import__("glob").glob("sslab_runs/**/*.partial", recursive=True)]


def test_an_existing_experiment_gets_the_ui_kind_tag(tmp_path):
    from orchestrator.tracking.record import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    made_by_hand = MlflowClient(uri).create_experiment("older")
    assert "mlflow.experimentKind" not in MlflowClient(uri).get_experiment(made_by_hand).tags
    tracker = Tracker(uri, "older")
    assert tracker.experiment_id == made_by_hand
    assert MlflowClient(uri).get_experiment(made_by_hand).tags["mlflow.experimentKind"] == "custom_model_development"


def test_cli_rejects_bad_config_before_starting_anything(workdir):
    out = subprocess.run([os.path.join(BIN, "sslab"), "train", f"{ROOT}/examples/quickstart.yaml", "--set", "train.lr=0"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "train.lr: Input should be greater than 0" in out.stderr
    assert not os.path.exists("mlflow.db") and not os.path.exists("sslab_runs")
