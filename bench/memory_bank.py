"""Memory bank: exact InfoNCE over a sharded Ray bank against an in-process bank and a MoCo queue.

    .venv/bin/python bench/memory_bank.py            # ~2-3 minutes on 2 CPU cores
    .venv/bin/python bench/memory_bank.py --quick    # ~1 minute

A training step here is what the bank adds to a contrastive step, with K = 65,536 keys of
D = 128, a batch of B = 256 and temperature 0.2: the key encoder's forward (a stand-in MLP,
3072 -> 4096 -> 128 on B inputs, about 6.4 GFLOP, run under no_grad as MoCo's momentum encoder is;
`--encoder-hidden` changes its width), the InfoNCE of the
query against the positive and every key of the bank, its backward (gradient w.r.t. the query),
and the push of the step's B keys. Methods, timed in the same run, interleaved one after another
in each round:

  local    the limit: workloads.bank.LocalBank (2 BankShards in this process, same content),
           exact InfoNCE from partial log-sum-exp statistics, in-process.
  moco     the peer: a replicated MoCo-style queue, a plain [K, D] tensor on the worker,
           `info_nce_loss(q, p, queue, tau)` with autograd, ring-buffer write of the new keys.
  sharded  orchestrator.memory_bank.ShardedMemoryBank with 2 shard actors (1 thread each),
           `bank.info_nce` after the key encoder (no overlap).
  overlap  the same bank, `bank.request_info_nce` before the key encoder, `pending.loss` after
           it: the shards compute the partials while this process runs the key encoder.
  encoder  the step without any bank (query head forward/backward, key encoder): what is left.

The ratio is the median over rounds of method step time / local step time (and / moco) in the
same round (a time ratio: lower is faster); "speed vs moco" is its inverse against moco (higher is
faster). Then the bytes moved per step (tensor bytes sent to and received from the shards,
as the bank counts them: the query out to each shard, the partials or top-k back, the pushed
keys) for K = 16k, 65k and 262k in the `exact` (info_nce) and `hardest` (top-16) modes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.bank import LocalBank  # noqa: E402
from workloads.losses import info_nce_loss  # noqa: E402

TAU = 0.2


def unit(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=generator), dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps, bytes for 16k and 65k only")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4, help="steps per method per round")
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--encoder-hidden", type=int, default=4096,
                        help="hidden width of the stand-in key encoder 3072 -> H -> D (its cost is what overlap can hide)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 3, 2
    K, D, B, S = args.size, args.dim, args.batch, args.shards
    if args.threads:
        torch.set_num_threads(args.threads)

    import ray

    from orchestrator.memory_bank import ShardedMemoryBank

    # address="local": always a fresh instance of our own, never a cluster some other process
    # announced in /tmp/ray/ray_current_cluster
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    g = torch.Generator().manual_seed(0)
    content = unit(K, D, g)
    encoder = torch.nn.Sequential(torch.nn.Linear(3072, args.encoder_hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(args.encoder_hidden, D))
    images = torch.randn(B, 3072, generator=g)
    query_head = torch.nn.Linear(D, D)  # the query's own graph, so backward has work to reach
    features = unit(B, D, g)

    local = LocalBank(K, D, num_shards=S)
    local.push(content)
    queue, ptr = content.clone(), 0
    bank = ShardedMemoryBank(size=K, dim=D, num_shards=S, snapshot_every=0)
    bank.push(content, step=0)
    step = [1]

    def key_encoder():
        with torch.no_grad():
            return F.normalize(encoder(images), dim=1)

    def query():
        return F.normalize(query_head(features), dim=1)

    def run_local():
        q = query()
        k = key_encoder()
        loss = local.info_nce(q, k, TAU)
        loss.backward()
        local.push(k)
        return loss

    def run_moco():
        nonlocal ptr
        q = query()
        k = key_encoder()
        loss = info_nce_loss(q, k, queue, TAU)
        loss.backward()
        queue[ptr:ptr + B] = k
        ptr = (ptr + B) % K
        return loss

    def run_sharded():
        q = query()
        k = key_encoder()
        loss = bank.info_nce(q, k, TAU)
        loss.backward()
        bank.push(k, step=step[0])
        step[0] += 1
        return loss

    def run_overlap():
        q = query()
        pending = bank.request_info_nce(q, TAU)  # the shards start now ...
        k = key_encoder()  # ... while this process runs the key encoder
        loss = pending.loss(k)
        loss.backward()
        bank.push(k, step=step[0])
        step[0] += 1
        return loss

    def run_encoder_only():
        query().sum().backward()
        return key_encoder()

    methods = {"local": run_local, "moco": run_moco, "sharded": run_sharded, "overlap": run_overlap,
               "encoder": run_encoder_only}
    # sanity: same content, same query -> same loss (the sharded bank is exact)
    q, k = query(), key_encoder()
    exact = (bank.info_nce(q, k, TAU).item(), local.info_nce(q, k, TAU).item(), info_nce_loss(q, k, queue, TAU).item())
    print(f"K={K} D={D} B={B} shards={S} torch threads={torch.get_num_threads()}; "
          f"loss sharded/local/moco on the same content: {exact[0]:.6f} / {exact[1]:.6f} / {exact[2]:.6f}")
    for fn in methods.values():  # warm up
        fn()
    bank.metrics()
    times = {name: [] for name in methods}
    for r in range(args.rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                methods[name]()
            times[name].append((time.perf_counter() - start) / args.steps)
    m = bank.metrics()
    print(f"\nseconds per step (median over {args.rounds} rounds of {args.steps} steps) and ratios per round:")
    print("(time ratios: lower is faster; speed vs moco = moco's step time / the method's, higher is faster)")
    print(f"{'method':10s} {'s/step':>8s} {'vs local':>9s} {'vs moco':>8s} {'speed vs moco':>14s}")
    for name in methods:
        vs_local = statistics.median(t / l for t, l in zip(times[name], times["local"]))
        vs_moco = statistics.median(t / l for t, l in zip(times[name], times["moco"]))
        speed = statistics.median(l / t for t, l in zip(times[name], times["moco"]))
        print(f"{name:10s} {statistics.median(times[name]):8.4f} {vs_local:8.2f}x {vs_moco:7.2f}x {speed:13.2f}x")
    gain = statistics.median(o / s for o, s in zip(times["overlap"], times["sharded"]))
    print(f"overlap / sharded (per round, median): {gain:.2f}x")
    print(f"bank metrics over the sharded+overlap steps: query_seconds {m['bank/query_seconds']:.4f}, "
          f"push_seconds {m['bank/push_seconds']:.5f}, bytes_moved {m['bank/bytes_moved']:.0f}")
    bank.close()

    print("\nbytes moved per step (push of B keys + one query), as counted by the bank:")
    print(f"{'K':>8s} {'mode':8s} {'query out':>10s} {'back':>10s} {'push':>10s} {'bank/bytes_moved':>17s}")
    sizes = [16384, 65536] + ([] if args.quick else [262144])
    for size in sizes:
        b = ShardedMemoryBank(size=size, dim=D, num_shards=S, snapshot_every=0)
        b.push(unit(size, D, g), step=0)
        q = unit(B, D, g)
        for mode in ("exact", "hardest"):
            b.metrics()
            b.push(unit(B, D, g), step=b._next_step)
            if mode == "exact":
                result = b.request_info_nce(q, TAU).partials()
            else:
                result = b.hardest(q, 16)
            out = q.numel() * 4 * S
            pushed = B * D * 4
            counted = b.metrics()["bank/bytes_moved"]
            per_shard_back = counted - out - pushed
            print(f"{size:8d} {mode:8s} {out:10d} {per_shard_back:10.0f} {pushed:10d} {counted:17.0f}")
            del result
        b.close()
    print("(back: the partials (max, sum_exp [B] and weighted keys [B, D]) or the top-k (sims [B, k] and keys"
          " [B, k, D]) from each of the shards; none of it depends on K)")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
