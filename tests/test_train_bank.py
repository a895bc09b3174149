"""`sslab train` with the shared memory bank: bank metrics, checkpointed bank state, a shard killed mid-run."""
import glob
import os
import signal
import threading
import time

import pytest
import torch
from conftest import ROOT
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

from orchestrator.config.loader import load_config
from orchestrator.training.run import run_training

BANK = ["train.epochs=4", "train.batch_size=128", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.progress=false", "data.val_fraction=0.1", "eval.linear_probe=false", "workload.loss=info_nce",
        "bank.mode=queue", "bank.size=1024", "bank.shards=2", "bank.snapshot_every=5", "name=bank"]


def train_and_kill_after_first_epoch(config, client, find_pid):
    """Run training in a thread; once epoch 0 is recorded, SIGKILL the process find_pid() names."""
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_training(config)))
    runner.start()
    killed = None
    deadline = time.time() + 600
    while runner.is_alive() and time.time() < deadline:
        experiment = client.get_experiment_by_name(config.name)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            killed = find_pid()
            os.kill(killed, signal.SIGKILL)  # a real crash of that process
            break
        time.sleep(0.2)
    runner.join(600)
    assert killed is not None, "the run ended before the process could be killed"
    return outcome["result"].run_id


def alive_pids(ray_local, class_name: str) -> list[int]:
    actors = list_actors(address=ray_local.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])
    return [actor.pid for actor in actors]


@pytest.mark.slow
def test_killed_shard_is_restarted_and_refilled_and_the_run_finishes(ray_local, workdir):
    config = load_config(f"{ROOT}/examples/quickstart.yaml", BANK)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run_id = train_and_kill_after_first_epoch(config, client, lambda: alive_pids(ray_local, "ShardServer")[0])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    restarts = client.get_metric_history(run_id, "bank/shard_restarts")
    assert [m.value for m in restarts][-1] == 1
    assert all(m.value == 1.0 for m in client.get_metric_history(run_id, "bank/fill")[1:])
    assert client.get_metric_history(run_id, "bank/bytes_moved")[0].value > 0
    assert run.data.tags["sslab.bank_nodes"]
    [latest] = sorted(glob.glob("sslab_runs/bank-*/checkpoint_*/train_state.pt"))[-1:]
    state = torch.load(latest, weights_only=True)
    assert state["epoch"] == 3 and "bank" in state and "key_encoder" in state


@pytest.mark.slow
def test_a_killed_training_worker_resumes_model_and_bank_from_the_last_checkpoint(ray_local, workdir):
    config = load_config(f"{ROOT}/examples/quickstart.yaml", BANK + ["name=resume", "train.max_failures=1"])
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run_id = train_and_kill_after_first_epoch(config, client, lambda: alive_pids(ray_local, "RayTrainWorker")[0])
    assert client.get_run(run_id).info.status == "FINISHED"
    [resumed] = client.get_metric_history(run_id, "train/resumed_from_epoch")
    assert resumed.value >= 1
    assert {m.step for m in client.get_metric_history(run_id, "train/loss")} == {0, 1, 2, 3}
    assert all(m.value == 1.0 for m in client.get_metric_history(run_id, "bank/fill")[1:])
