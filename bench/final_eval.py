"""The final evaluation's cost: `downstream_scores` in exact fp32 NCHW against bf16 + channels_last, same run.

    flock /tmp/sslab-bench.lock .venv/bin/python bench/final_eval.py             # ~4 min on a 2-core VM
    flock /tmp/sslab-bench.lock .venv/bin/python bench/final_eval.py --images 1000 --repeats 1   # a smoke run

What a run's end computes (orchestrator.training.final_report): kNN and the linear probe fitted on the
training split and scored on val and test, and repr/* on two augmented views of val, with a
ResNet-18-CIFAR on `--images` images of the bundled CIFAR-10 sample (split 70/20/10 as a run splits).
The encoder is untrained (its BatchNorm statistics measured on the training split, so its features are
an encoder's, not a fresh module's); what is compared is the same encoder's two ways of computing
its features: `eval.precision: fp32` against `train` for a run with train.precision bf16 and
train.channels_last true (the CPU fast path; the model converted to NHWC as training converts it).

The variants alternate (fp32, fast, fast, fp32, ...) so a load change hits both alike; the ratio is
fp32's seconds over fast's, on this process's CPU time (what the work costs, which a shared machine's
other jobs change less than the wall clock) and on the wall clock. The scores' differences are fast's
minus fp32's. bf16 is fast only on CPUs with AVX512-BF16 or AMX (this prints whether torch sees them).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.augment import SimCLRAugment  # noqa: E402
from workloads.data import Normalization, load_images, split_three_ways  # noqa: E402
from workloads.downstream import downstream_scores  # noqa: E402
from workloads.models import build_backbone  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data",
                      "cifar10_sample.parquet")


def splits(images: int):
    data = load_images(SAMPLE)
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:images]  # every class, shuffled
    data = data.subset(keep.sort().values)
    train, val, test = (data.subset(i) for i in split_three_ways(data.labels, 0.2, 0.1, seed=0))
    return train, val, test, Normalization.of_images(train.images)


@torch.no_grad()
def calibrated_resnet(train, normalization: Normalization) -> torch.nn.Module:
    """ResNet-18-CIFAR (seed 0) whose BatchNorm running statistics are those of the training split."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar")
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average over the batches below
    backbone.train()
    for start in range(0, min(len(train), 1024), 256):
        backbone(normalization.normalize(train.images[start : start + 256].float() / 255))
    return backbone.eval()


def timed(run) -> tuple[dict, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    scores = run()
    return scores, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="sample images used (train/val/test 70/20/10)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, val, test, normalization = splits(args.images)
    backbone = calibrated_resnet(train, normalization)
    nhwc = copy.deepcopy(backbone).to(memory_format=torch.channels_last)  # as a channels_last run's encoder is
    augment = SimCLRAugment(32, mean=normalization.mean, std=normalization.std)
    variants = {
        "fp32": lambda: downstream_scores(backbone, train, val, normalization, augment, held_out=test)[0],
        "bf16+channels_last": lambda: downstream_scores(nhwc, train, val, normalization, augment, held_out=test,
                                                        precision="bf16", channels_last=True)[0],
    }
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load {os.getloadavg()[0]:.2f}; {len(train)} train / {len(val)} val / {len(test)} test images", flush=True)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    scores: dict[str, dict] = {}
    for r in range(args.repeats):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            scores[name], cpu, wall = timed(variants[name])
            seconds[name].append((cpu, wall))
            print(f"  repeat {r + 1}/{args.repeats} {name}: {cpu:.1f} CPU-s, {wall:.1f} s wall", flush=True)

    fp32, fast = (seconds[name] for name in variants)
    print(f"\n{'variant':<20}{'CPU-s (median)':>16}{'wall s (median)':>17}")
    for name, runs in seconds.items():
        print(f"{name:<20}{statistics.median(c for c, _ in runs):>16.1f}{statistics.median(w for _, w in runs):>17.1f}")
    print(f"speed-up of bf16+channels_last: {statistics.median(a[0] / b[0] for a, b in zip(fp32, fast)):.2f}x per "
          f"CPU-second, {statistics.median(a[1] / b[1] for a, b in zip(fp32, fast)):.2f}x wall")
    print(f"\n{'score':<24}{'fp32':>10}{'bf16+cl':>10}{'diff':>10}")
    for key in scores["fp32"]:
        a, b = scores["fp32"][key], scores["bf16+channels_last"][key]
        print(f"{key:<24}{a:>10.4f}{b:>10.4f}{b - a:>+10.4f}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
