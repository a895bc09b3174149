"""What a video run measures outside its training step: its splits (by source video), the image set of
the image kNN, and the scores: downstream/* on the validation split (what selects), test/* on the
held-out split, each with its random-init and copy-the-first-frame baselines, and the task's own
metrics on held-out clips (val/pretext/*, test/pretext/*)."""
from __future__ import annotations

import os
from typing import NamedTuple

import torch

from orchestrator.config.local_paths import DEFAULT_SPRITES
from orchestrator.config.schema import SSLabConfig
from workloads.data import ImageDataset, Normalization, load_images, split_three_ways
from workloads.video.data.load import load_video
from workloads.video.data.split import split_by_source
from workloads.video.dataset import VideoDataset
from workloads.video.downstream import video_scores

IMAGE_SPLIT = (0.2, 0.1)  # the image kNN's memory / query split of eval.images_uri: the quick start's


class VideoSplits(NamedTuple):
    train: VideoDataset
    val: VideoDataset
    test: VideoDataset | None
    normalization: Normalization
    images: tuple[ImageDataset, ImageDataset, ImageDataset] | None  # the image kNN's train / val / test


def images_uri(config: SSLabConfig) -> str | None:
    """eval.images_uri (the driver sets it to the bundled sample where that is: with_absolute_paths),
    else the sample in this worker's folder, else None: no image kNN."""
    if config.eval.images_uri:
        return config.eval.images_uri
    return os.path.abspath(DEFAULT_SPRITES) if os.path.exists(DEFAULT_SPRITES) else None


def load_video_splits(config: SSLabConfig) -> VideoSplits:
    data = config.data
    clips = load_video(data.uri, clip_frames=data.clip_frames, image_size=data.image_size, fps=data.fps,
                       s3_endpoint_url=data.s3_endpoint_url, max_clips_per_video=data.max_clips_per_video,
                       cache_dir=data.cache_dir)
    train, val, test = split_by_source(clips, data.val_fraction, data.test_fraction, config.seed)
    normalization = Normalization.of_images(train.clips.flatten(0, 1))
    images = None
    if (uri := images_uri(config)) is not None:
        labelled = load_images(uri, image_size=data.image_size, s3_endpoint_url=data.s3_endpoint_url)
        parts = split_three_ways(labelled.labels, *IMAGE_SPLIT, config.seed, labelled.classes)
        images = tuple(labelled.subset(part) for part in parts)
    return VideoSplits(train, val, test if test is not None and len(test) else None, normalization, images)


def scores(config: SSLabConfig, encoder, splits: VideoSplits, device, which: str = "val") -> dict[str, float]:
    """downstream/* (which='val') or test/* (which='test', held out) of the encoder as it is now."""
    query = splits.val if which == "val" else splits.test
    if query is None:
        return {}
    images = {} if splits.images is None else {"images_train": splits.images[0],
                                               "images_test": splits.images[1 if which == "val" else 2]}
    found = video_scores(encoder, splits.normalization, train=splits.train, test=query, knn_k=config.eval.knn_k,
                         knn_temperature=config.eval.knn_temperature, max_clips=config.eval.max_clips, device=device,
                         propagation={"topk": config.eval.propagation_topk,
                                      "temperature": config.eval.propagation_temperature,
                                      "context": config.eval.propagation_context}, **images)
    if which == "val":
        return found
    return {("test/" + key.split("/", 1)[1] if key.startswith("downstream/") else f"test/{key}"): value
            for key, value in found.items()}


def random_init_scores(config: SSLabConfig, encoder, splits: VideoSplits, device) -> dict[str, float]:
    """The same validation scores of the encoder before training: downstream/random_init/*."""
    return {key.replace("downstream/", "downstream/random_init/", 1): value
            for key, value in scores(config, encoder, splits, device).items() if key.startswith("downstream/")}


@torch.no_grad()
def task_metrics(task, clips: VideoDataset | None, normalization: Normalization, batch_size: int, device,
                 prefix: str, seed: int = 0) -> dict[str, float]:
    """The pretext task's own metrics (e.g. frame-order accuracy) on held-out clips, in eval mode, with
    its random choices (tuples, directions) seeded: `prefix`/pretext/<name>."""
    if clips is None or len(clips) == 0:
        return {}
    was_training = task.training
    task.eval()
    sums: dict[str, float] = {}
    batches = 0
    batch_size = max(2, min(batch_size, len(clips)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(clips) - batch_size + 1, batch_size):
            ids = torch.arange(start, start + batch_size)
            x = clips.clips[ids].to(device).float().div_(255.0)
            x = normalization.normalize(x.flatten(0, 1)).view_as(x)
            for name, value in task(x, None).metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            batches += 1
    task.train(was_training)
    return {f"{prefix}/pretext/{name}": value / batches for name, value in sums.items()} if batches else {}
