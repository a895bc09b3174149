"""Four concurrent trials on the default SQLite MLflow store: every metric each trial logged is there,
no run failed, nothing said "database is locked".

Each trial logs its per-step loss at every step (train.log_step_loss_every=1) and its per-epoch
metrics, so the store sees many small writes from four trials' Ray Train controllers, the trials'
tasks and the driver at once."""
import json

import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import load_config
from orchestrator.sweep.driver import run_sweep

# SMALL_SAMPLE's 1,000 images less a 10% val and a 10% test split; batches of 25: 32 steps an epoch, so each
# trial writes 64 step losses, no fewer than on the whole sample (62: batches of 128 of its 4,000)
EPOCHS, BATCH, TRAIN_IMAGES = 2, 25, 800
SEARCH = {"objective": "downstream/knn_top1", "sampler": "grid", "pruner": "none", "n_trials": 4,
          "max_concurrent_trials": 4, "space": {"workload.temperature": {"type": "categorical",
                                                                          "choices": [0.1, 0.2, 0.3, 0.5]}}}
SETTINGS = [f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "model.width=4", "eval.knn_k=20",
            "eval.embedding_map_points=100", "train.progress=false", "data.val_fraction=0.1", "eval.linear_probe=false",
            "eval.random_init_baseline=false", "resources.cpus_per_worker=0.5", "train.log_step_loss_every=1",
            "name=sqlite_writers", f"search={json.dumps(SEARCH)}"]


@pytest.mark.slow
def test_four_concurrent_trials_lose_no_metric_on_sqlite(ray_local, workdir, small_data, capsys):
    config = load_config(f"{ROOT}/examples/quickstart.yaml", SETTINGS)
    result = run_sweep(config)
    assert result.counts == {"COMPLETE": 4}, result.counts
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("sqlite_writers")
    trials = client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'")
    assert len(trials) == 4
    steps_per_epoch = TRAIN_IMAGES // BATCH
    for run in trials:
        assert run.info.status == "FINISHED", run.data.tags.get("sslab.error")
        run_id = run.info.run_id
        for name in ("train/loss", "train/lr", "train/images_per_s"):
            assert sorted(m.step for m in client.get_metric_history(run_id, name)) == list(range(EPOCHS)), name
        step_losses = client.get_metric_history(run_id, "train/step_loss")
        assert sorted(m.step for m in step_losses) == list(range(EPOCHS * steps_per_epoch))
        assert {"downstream/knn_top1", "test/knn_top1", "repr/alignment"} <= set(run.data.metrics)
        assert {"data_hash", "data_mean", "data_std"} <= set(run.data.params)
    captured = capsys.readouterr()
    assert "database is locked" not in captured.out + captured.err
