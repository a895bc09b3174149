"""Memory bank at scale: an InstDisc instance bank of N entries at D = 128 spread over S shard
actors, against the same bank held whole in one process (LocalBank, the replicated layout).

    .venv/bin/python bench/bank_scale.py                       # N = 2^21 (1 GiB of float32 keys), S = 4
    .venv/bin/python bench/bank_scale.py --entries 1048576 --shards 2 --dtype bfloat16

What it measures, in one run:
  memory  the resident memory (RSS, /proc) of each shard actor with the bank, minus that of a
          shard actor of an 8-entry bank started the same way (the process itself: Python, torch,
          Ray), against K*(D*itemsize + 8)/S (the keys and their int64 ids); and the RSS this
          process grows by when it holds the whole bank (LocalBank), what every worker of a
          replicated bank would hold.
  time    a training step's bank work at B = 256: the exact InfoNCE of the queries over all N
          entries with their own ids excluded (value and backward), then the momentum update of
          their B entries. Sharded (request, then loss) against LocalBank in this process; the
          ratio is the median over rounds of sharded / local in the same round.
  exact   both banks start from the same entries (the init depends only on seed and dim) and get
          the same updates; the losses are printed side by side.
`--share-mib M` names a per-worker memory share (default: 1/8 of this machine's memory); the
bench says whether the bank, and one shard of it, fit in it.
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

MIB = 1 << 20
TAU = 0.07


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def shard_rss(bank) -> list[int]:
    import ray

    return [ray.get(a.hello.remote())["result"]["rss_bytes"] for a in bank.actors]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1 << 21)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--share-mib", type=int, default=None)
    parser.add_argument("--no-local", action="store_true", help="skip the in-process bank (time and memory)")
    args = parser.parse_args()
    N, D, S, B = args.entries, args.dim, args.shards, args.batch
    total_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    share = (args.share_mib * MIB) if args.share_mib else total_mem // 8
    itemsize = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()

    import ray

    from orchestrator.memory_bank import ShardedMemoryBank

    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    tiny = ShardedMemoryBank(size=8 * S, dim=D, num_shards=S, mode="instance", dtype=args.dtype, snapshot_every=0)
    start = time.perf_counter()
    bank = ShardedMemoryBank(size=N, dim=D, num_shards=S, mode="instance", dtype=args.dtype, snapshot_every=0)
    built = time.perf_counter() - start
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(B, D, generator=g), dim=1)  # warm the shards' query path before RSS
    bank.info_nce(q, q, TAU, query_ids=torch.arange(B))
    tiny.info_nce(q, q, TAU, query_ids=torch.arange(B))
    process = statistics.median(shard_rss(tiny))
    per_shard = [r - process for r in shard_rss(bank)]
    expected = N * (D * itemsize + 8) / S
    print(f"N={N} D={D} S={S} dtype={args.dtype} B={B}: bank {N * D * itemsize / MIB:.0f} MiB of keys; "
          f"{S} shards built in {built:.1f} s")
    print(f"shard actor RSS with the bank minus an 8-entry shard actor ({process / MIB:.0f} MiB), per shard (MiB): "
          + ", ".join(f"{r / MIB:.1f}" for r in per_shard)
          + f"; K*(D*{itemsize} + 8)/S = {expected / MIB:.1f} MiB; max / expected = {max(per_shard) / expected:.3f}")

    local = None
    if not args.no_local:
        before = rss_bytes()
        local = LocalBank(N, D, num_shards=S, mode="instance", dtype=args.dtype)
        grown = rss_bytes() - before
        print(f"LocalBank (the whole bank in this process): RSS +{grown / MIB:.1f} MiB "
              f"= {grown / max(per_shard):.2f}x one shard's")
    whole = N * (D * itemsize + 8)
    print(f"memory share of a worker: {share / MIB:.0f} MiB; the whole bank ({whole / MIB:.0f} MiB) "
          f"{'fits' if whole <= share else 'does not fit'}; one shard ({max(per_shard) / MIB:.0f} MiB measured) "
          f"{'fits' if max(per_shard) <= share else 'does not fit'}")

    def sharded_step(step, q, p, ids):
        q = q.clone().requires_grad_(True)
        loss = bank.request_info_nce(q, TAU, step=step, query_ids=ids).loss(p)
        loss.backward()
        bank.push(p, ids=ids, step=step)
        return loss.item()

    def local_step(step, q, p, ids):
        q = q.clone().requires_grad_(True)
        loss = local.info_nce(q, p, TAU, query_ids=ids)
        loss.backward()
        local.push(p, ids=ids, step=step)
        return loss.item()

    times = {"sharded": [], "local": []}
    losses = {"sharded": [], "local": []}
    for r in range(args.rounds):
        ids = torch.randperm(N, generator=g)[:B]
        q, p = F.normalize(torch.randn(2, B, D, generator=g), dim=2)
        for name, fn in (("sharded", sharded_step), ("local", local_step)):
            if fn is local_step and local is None:
                continue
            start = time.perf_counter()
            losses[name].append(fn(r + 1, q, p, ids))
            times[name].append(time.perf_counter() - start)
    print(f"\nstep time (exact InfoNCE over all {N} entries, backward, update of B entries), median of {args.rounds}:")
    print(f"  sharded {statistics.median(times['sharded']):.3f} s")
    if local is not None:
        ratio = statistics.median(s / l for s, l in zip(times["sharded"], times["local"]))
        print(f"  local   {statistics.median(times['local']):.3f} s; sharded / local per round (median): {ratio:.2f}x")
        gap = max(abs(a - b) for a, b in zip(losses["sharded"], losses["local"]))
        print(f"  losses sharded vs local, per step: {['%.6f' % x for x in losses['sharded']]} vs "
              f"{['%.6f' % x for x in losses['local']]}; max difference {gap:.2e}")
    bank.close()
    tiny.close()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
