"""The four video pretext tasks against the contrastive workload after the same training budget.

    .venv/bin/python bench/video_vs_contrastive.py                     # 60 s of training each, seed 0
    .venv/bin/python bench/video_vs_contrastive.py --budget 120 --seed 1

Every encoder is the same small ConvNet (width 16) trained for the same wall-clock budget on the
training clips of the examples' synthetic data (240 clips of 16 frames, 32 px, split by clip with
the seed; arrow of time's example adds friction, its cue): each video task with its example config
(bench/video_tasks.py's path, no Ray), and SimCLR (NT-Xent, temperature 0.2, the quick start's
augmentation and batch 256) on the training clips' frames taken as images. Each is then scored like
a run's end (workloads.video.downstream.video_scores) on the same held-out clips (without friction): label propagation J, clip kNN, and the image kNN on the bundled
CIFAR sample, beside the same encoder at random initialisation and the copy-the-first-frame baseline.
Prints one JSON line per encoder, then the ratios to the contrastive one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import torch
from video_tasks import optimizer_of

from orchestrator.config.loader import load_config
from workloads.augment import SimCLRAugment
from workloads.data import Normalization, load_images, split_three_ways
from workloads.methods.contrastive import ContrastiveLearner
from workloads.models import ProjectionHead, build_backbone
from workloads.training.loop import epoch_shard, train_epoch
from workloads.video.data.load import load_video
from workloads.video.data.split import split_by_source
from workloads.video.downstream import video_scores
from workloads.video.loop import video_train_epoch
from workloads.video.tasks.registry import build_video_task

KINDS = ("frame_order", "arrow_of_time", "tracking", "video_colorization")
SAMPLE = os.path.join(ROOT, "examples", "data", "cifar10_sample.parquet")
DATA = f"synthetic:moving_objects?clips=240&objects=2&seed=0&sprites={SAMPLE}"


def clips_for(uri: str, seed: int, clip_frames: int = 16, fractions=(0.2, 0.2)):
    """(train, val, test) of a synthetic URI, split by clip with the seed (the examples' 32 px, 16 frames)."""
    if uri.startswith("synthetic:") and "sprites=" not in uri:
        uri += f"&sprites={SAMPLE}"
    clips = load_video(uri, clip_frames=clip_frames, image_size=32)
    return split_by_source(clips, *fractions, seed)


def train_for(budget: float, one_epoch) -> tuple[int, float]:
    """Epochs of one_epoch(epoch) -> training seconds, until the budget is spent: (epochs, seconds)."""
    epoch, spent = 0, 0.0
    while spent < budget:
        spent += one_epoch(epoch)
        epoch += 1
    return epoch, spent


def video_task(kind: str, seed: int, budget: float):
    config = load_config(os.path.join(ROOT, "examples", f"{kind}.yaml"), [f"seed={seed}"])
    train, _, _ = clips_for(config.data.uri, seed)  # its example's clips (arrow of time's: with friction)
    normalization = Normalization.of_images(train.clips.flatten(0, 1))
    torch.manual_seed(seed * 1000)
    task = build_video_task(kind, config.workload.model_dump(exclude={"kind"}), "small_convnet", {"width": 16})
    task.normalization = normalization
    task.prepare(train)
    initial = {k: v.clone() for k, v in task.encoder.state_dict().items()}
    optimizer = optimizer_of(task.parameters(), config.train)
    batch = config.train.batch_size

    def one_epoch(epoch: int) -> float:
        indices = epoch_shard(len(train), epoch, seed, 0, 1, batch)
        return video_train_epoch(task, optimizer, None, train.clips, indices, batch, torch.device("cpu"), "fp32")[0].seconds

    epochs, spent = train_for(budget, one_epoch)
    return task.encoder, initial, normalization, epochs, spent


def contrastive(seed: int, budget: float, train, normalization):
    torch.manual_seed(seed * 1000)
    frames = train.clips.flatten(0, 1)  # the training clips' frames as images
    backbone = build_backbone("small_convnet", width=16)
    initial = {k: v.clone() for k, v in backbone.state_dict().items()}
    learner = ContrastiveLearner(backbone, ProjectionHead(backbone.feature_dim, 256, 64), "nt_xent", 0.2, 1.0)
    augment = SimCLRAugment(32, mean=normalization.mean, std=normalization.std)
    optimizer = torch.optim.AdamW(learner.parameters(), lr=0.002)

    def one_epoch(epoch: int) -> float:
        indices = epoch_shard(len(frames), epoch, seed, 0, 1, 256)
        return train_epoch(learner, optimizer, None, frames, indices, augment, 256, torch.device("cpu"), "fp32").seconds

    epochs, spent = train_for(budget, one_epoch)
    return backbone, initial, epochs, spent


def score(encoder, normalization, train, test, images) -> dict[str, float]:
    found = video_scores(encoder, normalization, train=train, test=test, images_train=images[0],
                         images_test=images[1], max_clips=32)
    return {k.replace("downstream/", ""): round(v, 3) for k, v in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per encoder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    labelled = load_images(SAMPLE, image_size=32)
    images = [labelled.subset(part) for part in split_three_ways(labelled.labels, 0.2, 0.1, args.seed)[:2]]
    train, _, test = clips_for(DATA, args.seed)  # every encoder is scored on these held-out clips
    rows = {}
    for kind in KINDS:
        started = time.time()
        encoder, initial, normalization, epochs, spent = video_task(kind, args.seed, args.budget)
        rows[kind] = {"epochs": epochs, "train_s": round(spent, 1), **score(encoder, normalization, train, test, images)}
        encoder.load_state_dict(initial)
        rows[kind]["random_init"] = score(encoder, normalization, train, test, images)
        print(json.dumps({"encoder": kind, **rows[kind], "wall_s": round(time.time() - started)}), flush=True)
    normalization = Normalization.of_images(train.clips.flatten(0, 1))
    backbone, initial, epochs, spent = contrastive(args.seed, args.budget, train, normalization)
    rows["contrastive"] = {"epochs": epochs, "train_s": round(spent, 1), **score(backbone, normalization, train, test, images)}
    backbone.load_state_dict(initial)
    rows["contrastive"]["random_init"] = score(backbone, normalization, train, test, images)
    print(json.dumps({"encoder": "contrastive (SimCLR on the frames)", **rows["contrastive"]}), flush=True)
    base = rows["contrastive"]
    for kind in KINDS:
        ratios = {k: round(rows[kind][k] / base[k], 2) for k in ("propagation/j_mean", "clip_knn_top1", "knn_top1")
                  if base.get(k)}
        print(json.dumps({"encoder": kind, "ratio to contrastive": ratios}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
