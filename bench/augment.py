"""SimCLR two-view augmentation throughput: batched kornia against torchvision v2 per sample.

    .venv/bin/python bench/augment.py            # ~1 minute on 2 CPU cores
    .venv/bin/python bench/augment.py --quick    # ~20 s
    .venv/bin/python bench/augment.py --device cuda

The same pipeline (random resized crop with scale (0.2, 1), flip p=0.5, colour jitter
0.4/0.4/0.4/0.1 with p=0.8, grayscale p=0.2, normalise), two views of a batch of 256 uint8
32x32 images, every sample with its own random parameters, four ways:

  tv2-loop        baseline: torchvision.transforms.v2 called once per image in the main process
                  (v2 draws one parameter set per call, so per-sample parameters mean one call per image)
  tv2-dataloader  the same per-image transform in a DataLoader with --workers worker processes
  kornia-aug      kornia.augmentation modules on the whole batch (per-sample parameters)
  sslab           workloads.augment.SimCLRAugment: kornia's functional ops, per-sample parameter tensors
  sslab-fused     SimCLRAugment(fused=True): crop+flip+resize in one grid_sample, the colour jitter,
                  grayscale and normalisation as one per-sample 3x3 affine map (workloads/augment_fused.py)

The in-process methods run interleaved, one repetition of each per round, and the ratio is the
median over rounds of (method images/s) / (tv2-loop images/s) in the same round: the machines are
shared and noisy, so only ratios measured in the same run compare. The DataLoader is timed in its
own phase (its workers would otherwise prefetch while the others run), from creating the iterator
to the last batch, worker start-up included. Images/s counts augmented images (2 per input image).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kornia  # noqa: E402
import kornia.augmentation as KA  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms.v2 as T  # noqa: E402

from workloads.augment import CIFAR10_MEAN, CIFAR10_STD, SimCLRAugment  # noqa: E402

SCALE = (0.2, 1.0)
JITTER = (0.4, 0.4, 0.4, 0.1)


def torchvision_transform(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=SCALE, antialias=True),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(*JITTER)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform: T.Compose) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.transform(self.images[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (~20 s)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=None, help="default 7, 2 with --quick")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers; 0 skips it")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--verbose", action="store_true", help="print every round's images/s")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 7)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    images_cpu = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    images = images_cpu.to(device)
    tv = torchvision_transform(args.size)
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    kaug = torch.nn.Sequential(
        KA.RandomResizedCrop((args.size, args.size), scale=SCALE),
        KA.RandomHorizontalFlip(p=0.5),
        KA.ColorJitter(*JITTER, p=0.8),
        KA.RandomGrayscale(p=0.2),
        KA.Normalize(mean, std),
    ).to(device)
    ours = SimCLRAugment(image_size=args.size, crop_scale=SCALE, jitter=JITTER)
    ours_fused = SimCLRAugment(image_size=args.size, crop_scale=SCALE, jitter=JITTER, fused=True)

    def tv_loop() -> None:
        torch.stack([tv(im) for im in images]), torch.stack([tv(im) for im in images])

    def kornia_aug() -> None:
        x = images.float().div_(255)
        kaug(x), kaug(x)

    def sslab() -> None:
        ours(images)

    def sslab_fused() -> None:
        ours_fused(images)

    methods = {"tv2-loop": tv_loop, "kornia-aug": kornia_aug, "sslab": sslab, "sslab-fused": sslab_fused}

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return 2 * args.batch / (time.perf_counter() - t0)

    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, kornia {kornia.__version__}; "
        f"device {device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )
    print(f"batch {args.batch} uint8 {args.size}x{args.size}, two views, {rounds} interleaved rounds")
    for fn in methods.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            rates[name].append(timed(fn))
        if args.verbose:
            print("  round: " + ", ".join(f"{name} {r[-1]:.0f}" for name, r in rates.items()), flush=True)

    if args.workers > 0 and device.type == "cpu":
        n_batches = 2 if args.quick else 6
        data = images_cpu.repeat(n_batches, 1, 1, 1)
        loader = torch.utils.data.DataLoader(
            TwoViews(data, tv), batch_size=args.batch, num_workers=args.workers
        )
        t0 = time.perf_counter()
        for _ in loader:
            pass
        dl_rate = 2 * len(data) / (time.perf_counter() - t0)
        # Its baseline: tv2-loop measured right after, in the same phase of the run.
        base_after = [timed(tv_loop) for _ in range(max(2, rounds // 2))]
        rates["tv2-dataloader"] = [dl_rate]
        dl_ratio = dl_rate / statistics.median(base_after)

    base = rates["tv2-loop"]
    print(f"{'method':<28}{'images/s (median)':>18}{'min':>8}{'max':>8}{'ratio vs tv2-loop':>19}")
    for name, r in rates.items():
        if name == "tv2-dataloader":
            ratio = dl_ratio
        else:
            ratio = statistics.median(x / b for x, b in zip(r, base))
        label = f"{name} ({args.workers} workers)" if name == "tv2-dataloader" else name
        print(f"{label:<28}{statistics.median(r):>18.0f}{min(r):>8.0f}{max(r):>8.0f}{ratio:>18.2f}x")
    if "tv2-dataloader" in rates:
        print(
            f"(tv2-dataloader: timed in its own phase, worker start-up included; its ratio is against "
            f"tv2-loop re-measured right after it, {statistics.median(base_after):.0f} images/s)"
        )


if __name__ == "__main__":
    main()
