"""Build a video pretext task by its workload kind, over a backbone of the configured family.

Every video task trains a plain backbone (normalised RGB frames in, features out), so a checkpoint of
any of them rebuilds its encoder with ``build_backbone`` alone.
"""
from __future__ import annotations

from workloads.models import build_backbone
from workloads.video.tasks.arrow_of_time import ArrowOfTime
from workloads.video.tasks.base import VideoTask
from workloads.video.tasks.frame_order import FrameOrder
from workloads.video.tasks.tracking import Tracking
from workloads.video.tasks.video_colorization import VideoColorization

VIDEO_TASKS: dict[str, type[VideoTask]] = {
    "frame_order": FrameOrder,
    "arrow_of_time": ArrowOfTime,
    "tracking": Tracking,
    "video_colorization": VideoColorization,
}


def build_video_task(kind: str, params: dict, backbone: str, backbone_kwargs: dict) -> VideoTask:
    """params: the workload block's hyperparameters (without kind), the task's keyword arguments."""
    if kind not in VIDEO_TASKS:
        raise ValueError(f"unknown video pretext kind {kind!r}; valid: {', '.join(VIDEO_TASKS)}")
    encoder = build_backbone(backbone, **backbone_kwargs)
    return VIDEO_TASKS[kind](encoder, encoder.feature_dim, **params)
