"""What each CPU optimisation gives sslab's training step: images/s of `train_epoch` per variant, same run.

    .venv/bin/python bench/cpu_fast_path.py                  # ~5 min on a loaded 2-core machine
    .venv/bin/python bench/cpu_fast_path.py --compile        # adds the torch.compile variants (minutes to compile)
    .venv/bin/python bench/cpu_fast_path.py --clock wall --threads 2    # wall-clock, both cores (a quiet machine)

Variants, each a SimCLR learner (small ConvNet width 32, head 256/64, NT-Xent, AdamW) with the same
initial weights, trained by `workloads.training.loop.train_epoch` on the sample's uint8 images, batch 256:

  plain           fp32, NCHW, the op-by-op augmentation (the defaults)
  fused           + augment.fused
  channels_last   + train.channels_last (model and views NHWC)
  bf16            + train.precision bf16 (autocast; AVX512-BF16/AMX CPUs)
  fast            fused + channels_last + bf16
  compile, fast+compile   (with --compile) + train.compile

Each round times one step of every variant, in a rotating order; a variant's ratio is the median over
rounds of its images/s / plain's images/s in the same round (the machine is shared and noisy: only
ratios measured in the same run compare). Compilation happens in the untimed warm-up.
The default clock is this process's CPU time on one torch thread: images per CPU-second measure the
work a variant does, which the other jobs of a shared machine change far less than the wall-clock
share of the cores this process gets (at load 20 the wall-clock rates of one variant spread 10x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.train_step import DATA, HIDDEN, LR, MARGIN, OUT_DIM, TEMPERATURE, WEIGHT_DECAY, load_uint8_images  # noqa: E402
from workloads.augment import SimCLRAugment  # noqa: E402
from workloads.methods.contrastive import ContrastiveLearner  # noqa: E402
from workloads.models import ProjectionHead, build_backbone  # noqa: E402
from workloads.training.compiled import compile_or_eager  # noqa: E402
from workloads.training.loop import train_epoch  # noqa: E402

VARIANTS = {  # name: (fused, channels_last, precision, compile)
    "plain": (False, False, "fp32", False),
    "fused": (True, False, "fp32", False),
    "channels_last": (False, True, "fp32", False),
    "bf16": (False, False, "bf16", False),
    "fast": (True, True, "bf16", False),
    "compile": (False, False, "fp32", True),
    "fast+compile": (True, True, "bf16", True),
}


def make_step(fused: bool, channels_last: bool, precision: str, compile: bool, images: torch.Tensor, batch: int,
              width: int, clock=time.process_time):
    torch.manual_seed(0)  # the same initial weights for every variant
    net = build_backbone("small_convnet", width=width)
    learner = ContrastiveLearner(net, ProjectionHead(net.feature_dim, HIDDEN, OUT_DIM), "nt_xent", TEMPERATURE, MARGIN)
    if channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    if compile:
        learner = compile_or_eager(learner)
    optimizer = torch.optim.AdamW(learner.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    augment = SimCLRAugment(images.shape[-1], fused=fused)
    gen = torch.Generator().manual_seed(1)

    def step() -> float:
        idx = torch.randperm(len(images), generator=gen)[:batch]
        start = clock()
        train_epoch(learner, optimizer, None, images, idx, augment, batch, torch.device("cpu"), precision,
                    channels_last=channels_last)
        return batch / (clock() - start)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time, or wall-clock")
    ap.add_argument("--compile", action="store_true", help="also the torch.compile variants")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images, source = load_uint8_images(DATA)
    names = [n for n in VARIANTS if args.compile or not VARIANTS[n][3]]
    print(f"torch {torch.__version__}; cpu, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
          f"small_convnet width {args.width}, batch {args.batch_size}, images: {source}; {args.rounds} rounds; "
          f"clock: {'process CPU time' if args.clock == 'cpu' else 'wall'}")
    steps = {}
    for name in names:
        start = time.perf_counter()
        steps[name] = make_step(*VARIANTS[name], images, args.batch_size, args.width,
                                time.process_time if args.clock == "cpu" else time.perf_counter)
        steps[name]()  # warm-up (compiles)
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            rates[name].append(steps[name]())
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names), flush=True)
    unit = "images/CPU-s" if args.clock == "cpu" else "images/s"
    print(f"{'variant':<16}{unit + ' (median)':>22}{'ratio vs plain':>16}")
    for name in names:
        ratio = statistics.median(x / p for x, p in zip(rates[name], rates["plain"]))
        print(f"{name:<16}{statistics.median(rates[name]):>22.0f}{ratio:>15.2f}x")


if __name__ == "__main__":
    main()
