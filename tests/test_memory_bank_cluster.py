"""The memory bank on a 2-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, both
nodes on 127.0.0.1): the shards of a 2-shard bank sit on both nodes (placement group, SPREAD),
and two ranks, one task on each node, push and query the one bank.

It runs in a subprocess: a process holds one Ray connection, and other test modules may already
have a local instance up in this one (the session's `ray_local`), which must not be shut down
under them. The subprocess starts the cluster, runs the check, prints a JSON line, and shuts the
cluster down itself; if it hangs, the test kills its process group (started by us, by pid)."""

import os

import pytest
from conftest import run_cluster_script

SCRIPT = r'''
import json, time
import ray, torch
import torch.nn.functional as F
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
result = {}
try:
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    from orchestrator.memory_bank import ShardedMemoryBank
    from workloads.losses import info_nce_loss
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    bank = ShardedMemoryBank(size=64, dim=8, num_shards=2, world_size=2)
    result["nodes"] = nodes
    result["shard_nodes"] = bank.shard_nodes
    result["actor_nodes"] = [ray.get(a.hello.remote())["result"]["node_id"] for a in bank.actors]

    def unit(n, seed):
        return F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)), dim=1)

    @ray.remote(num_cpus=1)
    def worker(bank, rank, steps):
        losses = []
        for step in range(steps):
            q, p = unit(4, 1000 + 10 * step + rank), unit(4, 2000 + 10 * step + rank)
            losses.append(bank.info_nce(q, p, 0.2, step=step).item())  # waits for step - 1 of both
            bank.push(unit(8, 10 * step + rank), step=step, rank=rank)
        bank.flush()
        return ray.get_runtime_context().get_node_id(), losses

    steps = 3
    runs = ray.get([worker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                    .remote(bank, rank, steps) for rank, node in enumerate(nodes)], timeout=180)
    result["worker_nodes"] = [node for node, _ in runs]
    keys = bank.keys(step=steps)
    expected = torch.cat([unit(8, 10 * s + r) for s in range(steps) for r in range(2)])
    result["contents_ok"] = sorted(map(tuple, keys.tolist())) == sorted(map(tuple, expected.tolist()))
    # rank 0's loss at the last step, recomputed over the keys of steps <= steps - 2
    q, p = unit(4, 1000 + 10 * (steps - 1)), unit(4, 2000 + 10 * (steps - 1))
    seen = torch.cat([unit(8, 10 * s + r) for s in range(steps - 1) for r in range(2)])
    result["loss_ok"] = abs(runs[0][1][-1] - info_nce_loss(q, p, seen, 0.2).item()) < 1e-5
    bank.close()
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(result))
'''


@pytest.mark.slow
def test_shards_spread_over_two_nodes(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = run_cluster_script(SCRIPT, [], cwd=root, timeout=240)
    assert len(result["nodes"]) == 2
    assert sorted(result["shard_nodes"]) == result["nodes"], result  # one shard on each node
    assert result["actor_nodes"] == result["shard_nodes"]
    assert sorted(result["worker_nodes"]) == result["nodes"]
    assert result["contents_ok"] and result["loss_ok"], result
