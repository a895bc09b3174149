"""Node loss: on a 2-node Ray cluster (ray.cluster_utils.Cluster, both nodes on 127.0.0.1) the worker
node's raylet is killed in the middle of a trial with train.max_failures=1. The trial restarts from its
last epoch checkpoint on the surviving node and finishes; the bank (2 shards, one on each node) is
refilled from the checkpoint; the MLflow run records train/resumed_from_epoch and train/restarts.

The head holds one CPU, taken by a placeholder actor until the trial's worker has started on the other
node, so the worker starts there; the placeholder is then removed, so the restarted worker fits on the
head. The script runs in a subprocess of its own (see test_memory_bank_cluster.py for why)."""

import pytest
from conftest import ROOT, free_port, run_cluster_script

SCRIPT = r'''
import json, sys, threading, time
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ray.util.state import list_actors

from orchestrator.config.loader import load_config
from orchestrator.training.run import run_training

root, workdir, dashboard_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
# a lost node is declared dead after a few missed health checks: 3 x 0.5 s instead of Ray's 5 x 3 s
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": True, "dashboard_host": "127.0.0.1",
    "dashboard_port": dashboard_port,
    "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
result = {}
try:
    worker_node = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    head_id = ray.get_runtime_context().get_node_id()
    lost_id = worker_node.node_id
    placeholder = ray.remote(num_cpus=1)(type("Placeholder", (), {"ping": lambda self: 1})).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head_id, soft=False)).remote()
    ray.get(placeholder.ping.remote())
    config = load_config(f"{root}/examples/quickstart.yaml", [
        "train.epochs=4", "train.batch_size=128", "model.width=4", "eval.knn_k=20", "eval.embedding_map_points=100",
        "train.progress=false", "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "workload.loss=info_nce", "bank.mode=queue", "bank.size=512", "bank.shards=2", "train.max_failures=1",
        f"data.uri={root}/examples/data/cifar10_sample.parquet", f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        f"storage.path={workdir}/runs", "name=nodeloss"])
    client = MlflowClient(config.tracking.uri)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_training(config)), daemon=True)
    runner.start()
    deadline = time.time() + 400
    while runner.is_alive() and time.time() < deadline:
        experiment = client.get_experiment_by_name("nodeloss")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            break
        time.sleep(0.2)
    gcs = cluster.address  # the state API of this cluster, not of another Ray found on the machine
    workers = list_actors(address=gcs, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    result["first_worker_nodes"] = [w.node_id for w in workers]
    result["shard_nodes_before"] = sorted(a.node_id for a in list_actors(
        address=gcs, filters=[("class_name", "=", "ShardServer"), ("state", "=", "ALIVE")]))
    ray.kill(placeholder)  # room on the head for the restarted worker
    killed_at = time.time()
    worker_node.kill_raylet()  # the node is lost: its workers and the shard on it go with the raylet
    runner.join(400)
    result["finished"] = not runner.is_alive()
    result["recovery_s"] = time.time() - killed_at
    run_id = outcome["result"].run_id
    run = client.get_run(run_id)
    result["status"] = run.info.status
    result["error"] = run.data.tags.get("sslab.error")
    history = lambda name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
    result["resumed"] = history("train/resumed_from_epoch")
    result["restarts"] = history("train/restarts")
    result["loss_steps"] = sorted({step for step, _ in history("train/loss")})
    result["fill"] = history("bank/fill")
    result["worker_nodes_tag"] = run.data.tags.get("sslab.worker_nodes", "")
    result["head"], result["lost"] = head_id, lost_id
    result["final_metrics"] = sorted(k for k in run.data.metrics if k.startswith(("downstream/", "test/")))
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(result))
'''


@pytest.mark.slow
def test_a_lost_node_restarts_the_trial_from_its_last_checkpoint_on_the_surviving_node(tmp_path):
    result = run_cluster_script(SCRIPT, [ROOT, str(tmp_path), str(free_port())], cwd=str(tmp_path), timeout=600)
    assert result["first_worker_nodes"] == [result["lost"]], result  # it started on the node we then lost
    assert result["finished"] and result["status"] == "FINISHED", result
    [(_, resumed_from)] = result["resumed"]
    assert resumed_from >= 1, result  # from an epoch checkpoint, not from scratch
    assert [value for _, value in result["restarts"]] == [1], result
    assert result["loss_steps"] == [0, 1, 2, 3], result
    assert all(value == 1.0 for step, value in result["fill"] if step >= resumed_from), result  # refilled
    assert result["head"] in result["worker_nodes_tag"], result  # it finished on the surviving node
    assert {"downstream/knn_top1", "test/knn_top1"} <= set(result["final_metrics"]), result
    print(f"node loss: recovered and finished {result['recovery_s']:.0f} s after the raylet was killed")
