"""Peers: SimCLR with lightly's recipe against sslab's full path, same data, same wall-clock budget, one run.

    pip install --no-deps lightly==1.6.0 lightning-utilities   # or: pip install -e .[bench]
    flock /tmp/sslab-bench.lock .venv/bin/python bench/peers.py              # 2 x 3 min of training + scoring
    .venv/bin/python bench/peers.py --minutes 0.5 --images 1000              # a quick look

Data: a stratified, seeded subset of /work/shared/data/cifar10-train.parquet (--images), split
train / val / test by sslab's own `load_splits` (what the sslab worker calls), so both sides train
on the same training split and are scored on the same held-out test split.

Both sides: the same ResNet-18-CIFAR (`workloads.models`), batch, optimiser and LR schedule (built
by sslab's `build_optimizer` and `warmup_cosine` from one config; train.epochs is nominal: it sets
the schedule, the budget ends training), temperature, projection sizes and torch threads.

  lightly  its SimCLRTransform (the settings of lightly's CIFAR-10 benchmark: cj_strength 0.5, no
           blur, ImageNet normalisation), SimCLRProjectionHead and NTXentLoss, a torch DataLoader
           (--lightly-workers processes), each view forwarded separately as in lightly's example.
  sslab    `sslab train` in a subprocess (Ray Train included) with train.max_minutes = --minutes.

Each side trains until the step that spends --minutes. images/s: images trained (two views each)
over the training loop's seconds (lightly: from the first batch fetch; sslab: the sum of its
epochs' train/images_per_s seconds, read from MLflow). Wall: the side's whole time (sslab: the
subprocess, Ray start and its own final evaluation included). kNN top-1: both encoders scored by the
same function (`trial_eval.knn_top1`: frozen features, k=200, tau=0.1, `workloads.evaluate.knn`),
the training split as the labelled memory (stratified by the split), the test split as queries.
The untrained backbone (same seed) is scored the same way first: the reference both sides must clear.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import yaml
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.config.loader import apply_override  # noqa: E402
from orchestrator.config.schema import SSLabConfig  # noqa: E402
from orchestrator.training import timeline  # noqa: E402
from orchestrator.training.learners import backbone_kwargs  # noqa: E402
from orchestrator.training.trial_eval import knn_top1, load_splits  # noqa: E402
from orchestrator.training.worker_parts import build_optimizer  # noqa: E402
from workloads.data import Normalization  # noqa: E402
from workloads.models import build_backbone  # noqa: E402
from workloads.training.loop import warmup_cosine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10 = os.environ.get("SSLAB_CIFAR10", os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-train.parquet"))
CPU = torch.device("cpu")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per side")
    parser.add_argument("--images", type=int, default=3000, help="the CIFAR-10 subset (stratified)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", default="adamw", choices=["sgd", "adam", "adamw"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=512, help="projection hidden size (lightly's ResNet-18 example)")
    parser.add_argument("--out-dim", type=int, default=128, help="projection output size")
    parser.add_argument("--epochs", type=int, default=100, help="nominal: the LR schedule's length on both sides")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per side")
    parser.add_argument("--lightly-workers", type=int, default=2, help="DataLoader processes on lightly's side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["lightly", "sslab"], help="run one side only (no ratios)")
    parser.add_argument("--no-rescore", action="store_true",
                        help="take sslab's own test/knn_top1 (the same function on the same splits) instead of "
                             "scoring its encoder.pt again here: saves one feature pass")
    parser.add_argument("--no-random-init", action="store_true", help="skip scoring the untrained backbone")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an sslab config key, e.g. train.compile=true (repeatable); lightly's side reads only "
                             "the model, loss, optimiser and budget keys of the same config")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace, data_uri: str, workdir: str) -> SSLabConfig:
    """The one config both sides are built from (validated as sslab validates any config)."""
    raw = {
        "name": "peers", "seed": args.seed,
        "data": {"uri": data_uri, "val_fraction": 0.1, "test_fraction": 0.2},
        "workload": {"kind": "contrastive", "loss": "nt_xent", "temperature": args.temperature},
        "model": {"backbone": "resnet18_cifar", "projection_hidden_dim": args.hidden, "projection_dim": args.out_dim},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
                  "weight_decay": args.weight_decay, "max_minutes": args.minutes, "progress": False},
        "eval": {"knn_k": 200, "knn_temperature": 0.1, "linear_probe": False, "embedding_map_points": 10},
        "resources": {"workers": 1, "cpus_per_worker": args.threads},
        "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db"},
        "storage": {"path": os.path.join(workdir, "runs")},
    }
    for assignment in args.set:
        apply_override(raw, assignment)
    return SSLabConfig.model_validate(raw)


def write_subset(count: int, seed: int, path: str) -> None:
    """count // 10 images of each class, drawn with a seeded generator (the file is sorted by class)."""
    import pyarrow.parquet as pq

    table = pq.read_table(CIFAR10)
    labels = table.column("label").to_numpy()
    rng = np.random.default_rng(seed)
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), count // 10, replace=False)
                                   for c in np.unique(labels)]))
    pq.write_table(table.take(rows), path)  # the schema metadata (class names) comes along


def lightly_parts(config: SSLabConfig):
    """(backbone, head, loss, transform, normalisation) of lightly's recipe at the config's settings."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    backbone = build_backbone(config.model.backbone, **backbone_kwargs(config))
    head = SimCLRProjectionHead(backbone.feature_dim, config.model.projection_hidden_dim, config.model.projection_dim)
    loss = NTXentLoss(temperature=config.workload.temperature)
    transform = SimCLRTransform(input_size=config.data.image_size, cj_strength=0.5, gaussian_blur=0.0)
    return backbone, head, loss, transform, Normalization(IMAGENET_NORMALIZE["mean"], IMAGENET_NORMALIZE["std"])


class TwoViews(torch.utils.data.Dataset):
    """Decoded uint8 images as PIL images (as torchvision's CIFAR10 serves them) through a transform."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images, self.transform = images.permute(0, 2, 3, 1).contiguous().numpy(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index]))


def train_lightly(config: SSLabConfig, splits, workers: int) -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(int(config.resources.cpus_per_worker))  # as the sslab worker does
    started = time.monotonic()
    backbone, head, criterion, transform, normalization = lightly_parts(config)
    optimizer = build_optimizer(list(backbone.parameters()) + list(head.parameters()), config.train)
    steps_per_epoch = len(splits.train) // config.train.batch_size
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.train.epochs,
                              steps_per_epoch * config.train.warmup_epochs)
    loader = torch.utils.data.DataLoader(TwoViews(splits.train.images, transform), config.train.batch_size,
                                         shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    backbone.train(), head.train()
    steps, start = 0, time.monotonic()
    for x0, x1 in itertools.chain.from_iterable(itertools.repeat(loader)):
        loss = criterion(head(backbone(x0)), head(backbone(x1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        steps += 1
        if time.monotonic() - start >= config.train.max_minutes * 60:  # the same rule as train.max_minutes
            break
    seconds = time.monotonic() - start
    knn = knn_top1(config, backbone, splits.train, splits.test, normalization, CPU)
    return summary(steps * config.train.batch_size, seconds, len(splits.train), knn, time.monotonic() - started)


def train_sslab(config: SSLabConfig, splits, workdir: str, rescore: bool = True) -> dict:
    from mlflow.tracking import MlflowClient

    from workloads.checkpoint import checkpoint_normalization, load_encoder

    path = os.path.join(workdir, "peers.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(config.model_dump(mode="json", exclude={"search"}), handle, sort_keys=False)
    marks = os.path.join(workdir, "timeline.jsonl")
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "sslab", "train", path], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, timeline.ENV: marks})
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"sslab train failed ({done.returncode}):\n{done.stderr[-4000:]}")
    printed = json.loads(done.stdout[done.stdout.rindex("{\n"):])
    client = MlflowClient(config.tracking.uri)
    steps = {m.step: m.value for m in client.get_metric_history(printed["run_id"], "train/steps")}
    rates = {m.step: m.value for m in client.get_metric_history(printed["run_id"], "train/images_per_s")}
    images = sum(steps.values()) * config.train.batch_size
    seconds = sum(steps[e] * config.train.batch_size / rates[e] for e in steps)
    knn = printed["test/knn_top1"]
    if rescore:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        backbone, metadata = load_encoder(client.download_artifacts(printed["run_id"], "encoder.pt", workdir))
        knn = knn_top1(config, backbone, splits.train, splits.test, checkpoint_normalization(metadata), CPU)
    return {**summary(images, seconds, len(splits.train), knn, wall), "reported": printed.get("test/knn_top1"),
            **wall_phases(marks, started, started + wall)}


def wall_phases(path: str, started: float, ended: float) -> dict:
    """Where the subprocess's wall time went, from the run's timeline marks (seconds; {} without them)."""
    try:
        with open(path) as handle:
            marks = [json.loads(line) for line in handle]
        first = {m["phase"]: m["t"] for m in reversed(marks)}
        last_epoch_end = max(m["t"] for m in marks if m["phase"] == "epoch_end")
        points = [("s_cli", started), ("s_mlflow_ray", first["trial_start"]), ("s_ray_train_data", first["fit_start"]),
                  ("s_model", first["data_ready"]), ("s_epochs", first["epoch_start"]),
                  ("s_final_eval", last_epoch_end), ("s_exit", first["fit_end"]), ("", ended)]
    except (OSError, KeyError, ValueError):  # an older tree without these marks
        return {}
    return {name: later - at for (name, at), (_, later) in zip(points, points[1:])}


def summary(images: int, seconds: float, train_size: int, knn: float, wall: float) -> dict:
    return {"images_per_s": images / seconds, "images": images, "epochs": images / train_size, "train_s": seconds,
            "wall_s": wall, "knn_top1": knn}


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sslab-peers-") as workdir:
        data = os.path.join(workdir, "cifar10_subset.parquet")
        write_subset(args.images, args.seed, data)
        config = run_config(args, data, workdir)
        splits = load_splits(config)
        print(f"CIFAR-10 subset of {args.images}: train {len(splits.train)} (the kNN memory), test {len(splits.test)}; "
              f"ResNet-18-CIFAR, batch {args.batch_size}, {args.optimizer} lr {args.lr}, temperature {args.temperature}, "
              f"projection {args.hidden}/{args.out_dim}, {args.threads} threads, {args.minutes} min per side; "
              f"sslab --set {' '.join(args.set) or '(none)'}", flush=True)
        results = {}
        if not args.no_random_init:  # the reference both sides must clear: the same backbone, untrained
            torch.manual_seed(config.seed)
            untrained = build_backbone(config.model.backbone, **backbone_kwargs(config))
            random_knn = knn_top1(config, untrained, splits.train, splits.test, lightly_parts(config)[4], CPU)
            print(f"random init kNN top-1 {random_knn:.4f} (the same backbone at seed {config.seed}, untrained)", flush=True)
        for side in ("lightly", "sslab"):
            if args.only in (None, side):
                load = os.getloadavg()[0]
                results[side] = (train_lightly(config, splits, args.lightly_workers) if side == "lightly"
                                 else train_sslab(config, splits, workdir, rescore=not args.no_rescore))
                print(f"{side:8s} " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in results[side].items())
                      + f"  load {load:.1f}->{os.getloadavg()[0]:.1f}", flush=True)  # 1-min load average: shared cores
    if len(results) == 2:
        mine, peer = results["sslab"], results["lightly"]
        print(f"ratio sslab/lightly: images/s {mine['images_per_s'] / peer['images_per_s']:.2f}x, "
              f"epochs {mine['epochs'] / peer['epochs']:.2f}x, kNN top-1 {mine['knn_top1'] / peer['knn_top1']:.3f}x "
              f"({mine['knn_top1'] - peer['knn_top1']:+.3f}), wall {mine['wall_s'] / peer['wall_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
