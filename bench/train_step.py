"""Training-step throughput: sslab's `train_epoch` against a bare PyTorch loop, same run.

    .venv/bin/python bench/train_step.py                     # ~40 s on 2 quiet CPU cores, ~3 min at load 4
    .venv/bin/python bench/train_step.py --threads 1         # steadier on shared cores
    .venv/bin/python bench/train_step.py --fast --threads 1 --clock cpu   # the CPU fast path, CPU time
    python3 bench/train_step.py --device cuda --backbone resnet18_cifar --batch-size 512

Both sides train SimCLR (NT-Xent, temperature 0.5) with AdamW (lr 1e-3, weight decay 1e-4) on
two views from `workloads.augment.SimCLRAugment`, through a backbone from `workloads.models`
and a `ProjectionHead` (hidden 256, out 64), the defaults of sslab's config:

  sslab  `workloads.training.loop.train_epoch` on a `ContrastiveLearner`, as the Ray Train worker
         calls it (no scheduler unless --scheduler, no on_step callback).
  bare   the physical limit: a plain `for` loop written below, on a deep copy of the same
         backbone and head (same architecture and initial weights) and its own AdamW: index the
         batch, copy it to the device, augment (the same module, called directly, under no_grad),
         forward backbone + head on cat(view1, view2) (under bf16 autocast where the precision is
         bf16), `nt_xent_loss`, zero_grad / backward / step.

Both read the same uint8 images from CPU memory (as the worker does) and, in a round, the same
batch indices. Each round times `--steps` steps of one side then the other (one step by default: the
shorter a round, the more alike the load its two halves see), alternating which goes first; the ratio is the median over rounds of sslab images/s / bare images/s in the same
round (the machines are shared and noisy: only ratios measured in the same run compare). Images/s
counts input images (each gives two views). On CUDA the clock stops after a synchronisation.
Exits 1 if the ratio is below --min-ratio.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.augment import SimCLRAugment  # noqa: E402
from workloads.methods.contrastive import ContrastiveLearner  # noqa: E402
from workloads.losses import nt_xent_loss  # noqa: E402
from workloads.models import ProjectionHead, build_backbone  # noqa: E402
from workloads.training.compiled import compile_or_eager  # noqa: E402
from workloads.training.loop import train_epoch, warmup_cosine  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data",
                    "cifar10_sample.parquet")
TEMPERATURE, MARGIN, LR, WEIGHT_DECAY, HIDDEN, OUT_DIM = 0.5, 1.0, 1e-3, 1e-4, 256, 64


def load_uint8_images(path: str | None, count: int = 5000, size: int = 32) -> tuple[torch.Tensor, str]:
    """The sample parquet's images, or random uint8 ones where it (or pyarrow) is unavailable."""
    if path:
        try:
            from workloads.data import load_images

            return load_images(path).images, os.path.basename(path)
        except Exception as error:  # noqa: BLE001 - e.g. no pyarrow on the GPU host
            print(f"(could not load {path}: {type(error).__name__}: {error}; using random images)")
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=gen), "random uint8"


def bare_precision(device: torch.device, precision: str) -> str:
    """What 'auto' means in sslab's worker: bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def bare_epoch(forward, optimizer, images, indices, augment, batch_size, device, precision,
               channels_last=False) -> torch.Tensor:
    """The baseline: a plain PyTorch SimCLR loop; forward(views) -> loss (bare_forward, maybe compiled)."""
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())
    loss = None
    for step in range(len(indices) // batch_size):
        batch = images[indices[step * batch_size : (step + 1) * batch_size]].to(device, non_blocking=True)
        with torch.no_grad():
            views = torch.cat(augment(batch))
            if channels_last:
                views = views.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = forward(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss


class BareForward(torch.nn.Module):
    """backbone -> head -> NT-Xent on the two halves: what the bare loop computes (and compiles, with --compile)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.head(self.backbone(views)).float().chunk(2)
        return nt_xent_loss(z1, z2, TEMPERATURE)


def compare(
    images: torch.Tensor,
    device: torch.device,
    backbone: str = "small_convnet",
    width: int = 32,
    batch_size: int = 256,
    precision: str = "auto",
    rounds: int = 21,
    steps: int = 1,
    warmup: int = 2,
    scheduler: bool = False,
    seed: int = 0,
    log=print,
    fused: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    clock=time.perf_counter,
) -> dict:
    """Interleaved rounds of sslab's train_epoch and the bare loop; returns rates and the median ratio.

    fused, channels_last, compile: the CPU fast path, on both sides (the same augmentation module;
    both models NHWC; sslab's learner through compile_or_eager, the bare forward through torch.compile).
    """
    torch.manual_seed(seed)
    kwargs = {"width": width} if backbone == "small_convnet" else {}
    net = build_backbone(backbone, **kwargs)
    head = ProjectionHead(net.feature_dim, HIDDEN, OUT_DIM)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    bare = BareForward(copy.deepcopy(net), copy.deepcopy(head)).to(device, memory_format=layout)
    learner = ContrastiveLearner(net, head, "nt_xent", TEMPERATURE, MARGIN).to(device, memory_format=layout)
    opt_sslab = torch.optim.AdamW(learner.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    opt_bare = torch.optim.AdamW(bare.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    bare.train()
    bare_forward = torch.compile(bare) if compile else bare
    if compile:
        learner = compile_or_eager(learner)
    sched = warmup_cosine(opt_sslab, 10**6, 10) if scheduler else None
    augment = SimCLRAugment(images.shape[-1], fused=fused).to(device)
    bare_prec = bare_precision(device, precision)

    gen = torch.Generator().manual_seed(seed)

    def round_indices(n_steps: int) -> torch.Tensor:
        need = n_steps * batch_size
        reps = -(-need // len(images))
        return torch.cat([torch.randperm(len(images), generator=gen) for _ in range(reps)])[:need]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn, idx: torch.Tensor) -> float:
        sync()
        t0 = clock()
        fn(idx)
        sync()
        return len(idx) / (clock() - t0)

    def run_sslab(idx: torch.Tensor) -> float:
        return timed(lambda i: train_epoch(learner, opt_sslab, sched, images, i, augment, batch_size, device,
                                           precision, channels_last=channels_last), idx)

    def run_bare(idx: torch.Tensor) -> float:
        return timed(lambda i: bare_epoch(bare_forward, opt_bare, images, i, augment, batch_size, device,
                                          bare_prec, channels_last), idx)

    t_warm = time.perf_counter()
    idx = round_indices(warmup)
    run_sslab(idx)
    run_bare(idx)
    log(f"warm-up: {warmup} steps each, {time.perf_counter() - t_warm:.1f} s")
    rates = {"sslab": [], "bare": []}
    ratios = []
    for r in range(rounds):
        idx = round_indices(steps)
        order = (("sslab", run_sslab), ("bare", run_bare))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            rates[name].append(fn(idx))
        ratios.append(rates["sslab"][-1] / rates["bare"][-1])
        log(f"  round {r + 1}/{rounds}: sslab {rates['sslab'][-1]:8.1f} img/s   bare {rates['bare'][-1]:8.1f} img/s"
            f"   ratio {ratios[-1]:.3f}")
    return {
        "backbone": backbone, "width": width if backbone == "small_convnet" else None, "batch_size": batch_size,
        "precision_sslab": precision, "precision_bare": bare_prec, "rounds": rounds, "steps_per_round": steps,
        "scheduler": scheduler, "device": str(device), "fused": fused, "channels_last": channels_last,
        "compile": compile,
        "sslab_images_per_s": statistics.median(rates["sslab"]),
        "bare_images_per_s": statistics.median(rates["bare"]),
        "ratio": statistics.median(ratios),
        "ratios": ratios, "rates": rates,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="small_convnet", choices=["small_convnet", "resnet18_cifar"])
    ap.add_argument("--width", type=int, default=32, help="small_convnet width")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="train_epoch's precision; auto = bf16 on CUDA, fp32 on CPU (the bare loop follows)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--steps", type=int, default=1, help="training steps per side per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the rounds")
    ap.add_argument("--scheduler", action="store_true", help="give train_epoch sslab's warmup-cosine scheduler")
    ap.add_argument("--data", default=DATA, help="parquet of images; '' for random uint8 images")
    ap.add_argument("--min-ratio", type=float, default=0.9)
    ap.add_argument("--fused", action="store_true", help="the fused augmentation (augment.fused), both sides")
    ap.add_argument("--channels-last", action="store_true", help="NHWC model and views (train.channels_last), both sides")
    ap.add_argument("--compile", action="store_true", help="torch.compile (train.compile), both sides; warm-up compiles")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (CPU only; steadier on a shared machine, with --threads 1)")
    ap.add_argument("--fast", action="store_true", help="every kept CPU optimisation: --fused --channels-last --precision bf16")
    args = ap.parse_args()
    if args.fast:
        args.fused, args.channels_last, args.precision = True, True, "bf16"

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, source = load_uint8_images(args.data or None)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}; device {device}{gpu}; torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{args.backbone}{f' width {args.width}' if args.backbone == 'small_convnet' else ''}, batch "
          f"{args.batch_size}, precision {args.precision}, images: {source} {list(images.shape)}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps per side")
    print(f"fast path: fused augmentation {args.fused}, channels_last {args.channels_last}, compile {args.compile}")
    result = compare(images, device, args.backbone, args.width, args.batch_size, args.precision, args.rounds,
                     args.steps, args.warmup, args.scheduler, fused=args.fused, channels_last=args.channels_last,
                     compile=args.compile, clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    print(f"sslab train_epoch: {result['sslab_images_per_s']:.1f} img/s (median over rounds)")
    print(f"bare PyTorch loop: {result['bare_images_per_s']:.1f} img/s (median over rounds)")
    print(f"ratio sslab/bare:  {result['ratio']:.3f} (median of per-round ratios; "
          f"min {min(result['ratios']):.3f}, max {max(result['ratios']):.3f})")
    if result["ratio"] < args.min_ratio:
        print(f"FAIL: ratio {result['ratio']:.3f} < --min-ratio {args.min_ratio}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
