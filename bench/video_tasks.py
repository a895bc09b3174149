"""Frame order and arrow of time: the task's own metric on held-out clips, at random init and trained.

    .venv/bin/python bench/video_tasks.py                              # both tasks, seeds 0 1 2
    .venv/bin/python bench/video_tasks.py --kinds arrow_of_time --seeds 0
    .venv/bin/python bench/video_tasks.py --set train.epochs=4 --set data.uri='synthetic:moving_objects?clips=96'

Each task trains its example config (examples/<kind>.yaml, with the --set overrides and seed=<seed>)
without Ray, the way orchestrator/training/video_worker.py trains one worker: the data of data.uri
split by source with the seed, the normalisation of the training frames, the task built by the
registry, the configured optimizer with warmup + cosine, epochs over epoch_shard's order, one torch
thread (resources.cpus_per_worker of the examples). Measured on the test split like
orchestrator/training/video_eval.py::task_metrics (eval mode, BatchNorm running statistics, the
task's random choices seeded with the seed): frame_order's balanced accuracy (chance 0.5 whatever the
share of shuffled tuples) and arrow_of_time's accuracy over the kept clips, before training (the
same model at random init) and after. Also printed: the per-epoch training loss and metric, and the
training wall time (data loading and scoring excluded).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch

from orchestrator.config.loader import load_config
from orchestrator.training.video_eval import task_metrics
from orchestrator.training.worker_parts import build_optimizer
from workloads.data import Normalization
from workloads.training.loop import epoch_shard, warmup_cosine
from workloads.video.data.load import load_video
from workloads.video.data.split import split_by_source
from workloads.video.loop import video_train_epoch
from workloads.video.tasks.registry import build_video_task

KINDS = ("frame_order", "arrow_of_time")
METRIC = {"frame_order": "balanced_accuracy", "arrow_of_time": "accuracy"}


def held_out(task, clips, normalization: Normalization, batch_size: int, seed: int) -> dict[str, float]:
    """The task's metrics on `clips` (a VideoDataset), measured as a run measures them (video_eval.task_metrics)."""
    found = task_metrics(task, clips, normalization, batch_size, "cpu", "held_out", seed)
    return {key[len("held_out/pretext/"):]: value for key, value in found.items()}


optimizer_of = build_optimizer  # the run's optimizer (bench/video_vs_contrastive.py imports it from here)


def measure(kind: str, seed: int, overrides: list[str], verbose: bool = True) -> dict:
    config = load_config(os.path.join(ROOT, "examples", f"{kind}.yaml"), [*overrides, f"seed={seed}"])
    data, train_cfg = config.data, config.train
    uri = data.uri
    if uri.startswith("synthetic:") and "sprites=" not in uri:
        uri += ("&" if "?" in uri else "?") + f"sprites={ROOT}/examples/data/cifar10_sample.parquet"
    clips = load_video(uri, clip_frames=data.clip_frames, image_size=data.image_size, fps=data.fps,
                       max_clips_per_video=data.max_clips_per_video)
    train, _, test = split_by_source(clips, data.val_fraction, data.test_fraction, config.seed)
    normalization = Normalization.of_images(train.clips.flatten(0, 1))
    torch.manual_seed(config.seed * 1000)
    params = config.workload.model_dump(exclude={"kind"})
    width = {"width": config.model.width} if config.model.backbone == "small_convnet" else {}
    task = build_video_task(kind, params, config.model.backbone, width)
    task.normalization = normalization
    task.prepare(train)
    before = held_out(task, test, normalization, train_cfg.batch_size, config.seed)
    optimizer = optimizer_of(task.parameters(), train_cfg)
    steps = len(train) // train_cfg.batch_size
    scheduler = warmup_cosine(optimizer, steps * train_cfg.epochs, steps * train_cfg.warmup_epochs)
    seconds, history = 0.0, []
    for epoch in range(train_cfg.epochs):
        indices = epoch_shard(len(train), epoch, config.seed, 0, 1, train_cfg.batch_size)
        stats, metrics = video_train_epoch(task, optimizer, scheduler, train.clips, indices, train_cfg.batch_size,
                                           torch.device("cpu"), "fp32")
        seconds += stats.seconds
        history.append((round(stats.loss, 3), round(metrics[METRIC[kind]], 3)))
    after = held_out(task, test, normalization, train_cfg.batch_size, config.seed)
    row = {"kind": kind, "seed": seed, "metric": METRIC[kind], "random_init": round(before[METRIC[kind]], 3),
           "trained": round(after[METRIC[kind]], 3), "train_s": round(seconds, 1), "steps": steps * train_cfg.epochs,
           "clips": f"{len(train)}/{len(test)} train/test",
           **{f"trained_{k}": round(v, 3) for k, v in after.items() if k != METRIC[kind]}}
    if verbose:
        row["epochs (loss, train metric)"] = history
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for kind in args.kinds:
        for seed in args.seeds:
            print(json.dumps(measure(kind, seed, args.set)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
