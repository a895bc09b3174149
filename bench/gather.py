"""Cost of the global-batch gather: DDP step time with ContrastiveLearner(gather=True) vs gather=False.

    .venv/bin/python bench/gather.py --rounds 41 --steps 2    # 68 s on 2 cores at load 1, 155 s at load 2

Measured 2026-12-02, dev VM (2 cores shared with other jobs), defaults (width 16, global batch 256,
2 workers x 1 thread): ratio with/without gather 1.070 (162.0 vs 152.5 ms/step; 1 process with 2
threads 202.1 ms/step) and, in a second run at a higher load, 0.977 (334.9 vs 329.7 ms/step; per-round
ratios 0.18-2.39): at this size the gather's cost is within the noise of a shared CPU machine.

W worker processes (gloo, CPU, `--threads` torch threads each) hold DistributedDataParallel copies of
the same ContrastiveLearner (small_convnet + ProjectionHead (hidden 256, out 64), NT-Xent,
temperature 0.5, AdamW) twice: one with gather on (the loss sees the global batch of --batch-size
images: one all_gather of the [n, 2, 64] embeddings forward, one all_reduce of their gradient
backward, and every rank computes the global loss) and one with gather off (each rank's loss sees its
own batch-size / W rows). Both train on the same fixed views (random 32x32 images; the augmentation is
left out, it is the same on both sides). Each round times --steps steps of one side then the other,
alternating which goes first, after a barrier; a step's time is the slowest rank's. The ratio is the
median over rounds of step time with / without gather in the same round (the machines are shared and
noisy: only ratios measured in the same run compare).

For reference, one process with W * --threads threads trains the same learner on the global batch
(gather is the identity there), before the workers start.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.methods.contrastive import ContrastiveLearner  # noqa: E402
from workloads.models import ProjectionHead, build_backbone  # noqa: E402

TEMPERATURE, MARGIN, LR, WEIGHT_DECAY, HIDDEN, OUT_DIM = 0.5, 1.0, 1e-3, 1e-4, 256, 64


def build(width: int, gather: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = build_backbone("small_convnet", width=width)
    learner = ContrastiveLearner(net, ProjectionHead(net.feature_dim, HIDDEN, OUT_DIM), "nt_xent", TEMPERATURE,
                                 MARGIN, gather=gather)
    return learner, torch.optim.AdamW(learner.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


def global_views(batch_size: int) -> torch.Tensor:
    return torch.randn(2, batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def train_steps(model, optimizer, views: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        loss = model(views[0], views[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def one_process(args) -> list[float]:
    """Seconds per step of one process on the global batch (W * threads threads)."""
    torch.set_num_threads(args.threads * args.world)
    learner, optimizer = build(args.width, gather=True)
    views = global_views(args.batch_size)
    train_steps(learner, optimizer, views, args.warmup)
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        train_steps(learner, optimizer, views, args.steps)
        times.append((time.perf_counter() - t0) / args.steps)
    return times


def worker(rank: int, args, port: int, queue) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world)
    try:
        per_rank = args.batch_size // args.world
        views = global_views(args.batch_size)[:, rank * per_rank : (rank + 1) * per_rank]
        sides = {}
        for gather in (True, False):
            learner, optimizer = build(args.width, gather)
            sides[gather] = (DistributedDataParallel(learner), optimizer)
            train_steps(*sides[gather], views, args.warmup)
        times = {True: [], False: []}
        for r in range(args.rounds):
            for gather in (True, False) if r % 2 == 0 else (False, True):
                dist.barrier()
                t0 = time.perf_counter()
                train_steps(*sides[gather], views, args.steps)
                slowest = torch.tensor(time.perf_counter() - t0)
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                times[gather].append(slowest.item() / args.steps)
        if rank == 0:
            queue.put(times)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=2, help="worker processes")
    ap.add_argument("--width", type=int, default=16, help="small_convnet width")
    ap.add_argument("--batch-size", type=int, default=256, help="global batch (images; each gives two views)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=1, help="training steps per side per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the rounds")
    args = ap.parse_args()
    if args.batch_size % args.world:
        ap.error(f"--batch-size {args.batch_size} must be a multiple of --world {args.world}")

    print(f"torch {torch.__version__}; cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; small_convnet "
          f"width {args.width}, NT-Xent, global batch {args.batch_size}; {args.rounds} rounds of {args.steps} steps")
    single = statistics.median(one_process(args))
    print(f"1 process, {args.threads * args.world} threads, batch {args.batch_size}: {1000 * single:.1f} ms/step "
          f"(median), {args.batch_size / single:.0f} img/s")

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(args, free_port(), queue), nprocs=args.world, join=True)
    times = queue.get()
    ratios = [on / off for on, off in zip(times[True], times[False])]
    for gather, label in ((True, "gather on "), (False, "gather off")):
        step = statistics.median(times[gather])
        print(f"{args.world} gloo workers x {args.threads} threads, {label}: {1000 * step:.1f} ms/step (median), "
              f"{args.batch_size / step:.0f} img/s")
    print(f"ratio step time with/without gather: {statistics.median(ratios):.3f} (median of per-round ratios; "
          f"min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
