"""One worker = two workers: the same global batch gives the same training, on a 2-node Ray cluster.

With the augmentation made deterministic (every probability 0, crop scale (1, 1)), the same global
batch and seed, and sync BatchNorm on, the first 3 steps' losses of a 2-worker run equal the
1-worker run's to 1e-4: for NT-Xent (in-batch negatives gathered from both workers) and for MoCo
with the sharded bank (one key encoder, exact InfoNCE over the shared queue). The 2-worker MoCo run
also shows the placement: its workers and its two shards on the two nodes.

The cluster (ray.cluster_utils.Cluster: a head and one worker node on 127.0.0.1) lives in a
subprocess, so this test never shares a Ray instance with the session's `ray_local`.
"""
import textwrap

import pytest
from conftest import ROOT, run_cluster_script
from mlflow.tracking import MlflowClient

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "dashboard_host": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    try:
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        from orchestrator.config.loader import load_config
        from orchestrator.training.run import run_training
        runs = {}
        for spec in sys.argv[2:]:
            name, *overrides = spec.split(" ")
            runs[name] = run_training(load_config(sys.argv[1], [f"name={name}", *overrides])).run_id
        print("RESULT " + json.dumps(runs))
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
""")

SAME = ["train.epochs=1", "train.batch_size=128", "model.width=8", "train.progress=false", "eval.linear_probe=false",
        "eval.random_init_baseline=false", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.log_step_loss_every=1", "model.sync_batchnorm=true", "resources.cpus_per_worker=1",
        # SGD at a moderate rate: the updates are proportional to the gradients, so float rounding (1e-5
        # after a step) is not amplified (Adam's normalised near-zero gradients, or lr 0.05, reached 3e-4)
        "train.optimizer=sgd", "train.lr=0.01",
        # deterministic views: every probability 0, the whole image
        "augment.crop_scale=[1.0,1.0]", "augment.flip_p=0", "augment.jitter_p=0", "augment.grayscale_p=0",
        "augment.blur_p=0"]
MOCO = ["workload.loss=info_nce", "bank.mode=queue", "bank.size=1024", "bank.shards=2", "bank.negatives=exact"]
STEPS = 3
pytestmark = pytest.mark.slow  # four Ray Train runs on a 2-node cluster: about 1.6 min alone on 2 cores


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_sample):
    workdir = tmp_path_factory.mktemp("equivalence")
    (workdir / "examples" / "data").mkdir(parents=True)
    # the record of the first steps, not learning: SMALL_SAMPLE's 700 training images give 5 steps of 128
    (workdir / "examples" / "data" / "cifar10_sample.parquet").symlink_to(small_sample)
    specs = {"ntxent1": ["resources.workers=1"], "ntxent2": ["resources.workers=2"],
             "moco1": ["resources.workers=1", *MOCO], "moco2": ["resources.workers=2", *MOCO]}
    args = [f"{ROOT}/examples/quickstart.yaml", *(" ".join([name, *SAME, *extra]) for name, extra in specs.items())]
    ids = run_cluster_script(SCRIPT, args, cwd=str(workdir), timeout=600)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    return client, ids


def first_losses(client, run_id) -> list[float]:
    history = sorted(client.get_metric_history(run_id, "train/step_loss"), key=lambda m: m.step)
    assert [m.step for m in history[:STEPS]] == list(range(STEPS))
    return [m.value for m in history[:STEPS]]


@pytest.mark.parametrize("workload", ["ntxent", "moco"])
def test_two_workers_train_as_one_on_the_same_global_batch(runs, workload):
    client, ids = runs
    one, two = (first_losses(client, ids[f"{workload}{w}"]) for w in (1, 2))
    assert two == pytest.approx(one, abs=1e-4), f"{workload}: 1 worker {one}, 2 workers {two}"
    assert abs(one[2] - one[0]) > 1e-3, "the steps train: the losses move by more than the tolerance"
    for w in (1, 2):
        assert client.get_run(ids[f"{workload}{w}"]).info.status == "FINISHED"


def test_two_workers_and_two_shards_spread_over_two_nodes(runs):
    client, ids = runs
    run = client.get_run(ids["moco2"])
    assert len(run.data.tags["sslab.bank_nodes"].split(",")) == 2, "the two shards sit on different nodes"
    assert len(run.data.tags["sslab.worker_nodes"].split(",")) == 2, "the two training workers sit on different nodes"
    assert run.data.params["model.sync_batchnorm"] == "True" and run.data.params["train.global_negatives"] == "True"
