"""A 2-worker `sslab train` with a 2-shard bank on a 2-node Ray cluster on this machine.

The cluster (ray.cluster_utils.Cluster: a head and one worker node on 127.0.0.1) lives in a
subprocess, so this test never shares a Ray instance with the session's `ray_local`.
"""
import textwrap

from mlflow.tracking import MlflowClient

from conftest import ROOT, run_cluster_script

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "dashboard_host": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        from orchestrator.config_loader import load_config
        from orchestrator.train_run import run_training
        config = load_config(sys.argv[1], sys.argv[2:])
        result = run_training(config)
        print("RESULT " + json.dumps({"run_id": result.run_id}))
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
""")


def test_two_workers_and_two_shards_spread_over_two_nodes(workdir):
    overrides = ["name=multinode", "resources.workers=2", "resources.cpus_per_worker=1", "train.batch_size=128",
                 "train.epochs=1", "model.width=8", "train.progress=false", "eval.linear_probe=false",
                 "eval.random_init_baseline=false", "eval.knn_k=20", "eval.embedding_map_points=200",
                 "workload.loss=info_nce", "bank.mode=queue", "bank.size=1024", "bank.shards=2"]
    run_id = run_cluster_script(SCRIPT, [f"{ROOT}/examples/quickstart.yaml", *overrides], cwd=str(workdir))["run_id"]
    run = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(run.data.tags["sslab.bank_nodes"].split(",")) == 2, "the two shards sit on different nodes"
    assert len(run.data.tags["sslab.worker_nodes"].split(",")) == 2, "the two training workers sit on different nodes"
    assert 0.0 <= run.data.metrics["downstream/knn_top1"] <= 1.0
