"""The `workload:` block of the video pretext tasks (workloads/video/tasks): each kind's hyperparameters,
searchable as `workload.<name>`, and the frames a clip must have for it (checked against data.clip_frames)."""
from typing import Literal

from pydantic import Field

from orchestrator.config.sections import Section


class FrameOrderWorkload(Section):
    """Shuffle & Learn (Misra et al. 2016): is a tuple of 3 frames in order (either direction)?"""
    kind: Literal["frame_order"]
    negatives_fraction: float = Field(0.75, gt=0.0, lt=1.0, description="share of shuffled tuples (paper: 0.75)")
    window: int = Field(5, ge=5, le=64, description="frames the tuple's positions a..e span")
    motion_quantile: float = Field(0.5, ge=0.0, lt=1.0, description="tuples only from windows at or above this "
                                   "quantile of frame-difference magnitude (the motion cue)")
    hidden: int = Field(256, ge=1, le=4096)

    def frames_needed(self) -> int:
        return self.window


class ArrowOfTimeWorkload(Section):
    """Arrow of time (Wei et al. 2018): is the clip played forward or backward?"""
    kind: Literal["arrow_of_time"]
    frames: int = Field(4, ge=2, le=32, description="frames (or differences) the fusion head sees")
    input: Literal["differences", "frames"] = "differences"
    crop_borders: bool = Field(True, description="crop black borders (an artificial cue)")
    static_threshold: float = Field(0.02, ge=0.0, le=1.0, description="reject clips moving less (mean |difference|)")
    cut_threshold: float = Field(0.35, gt=0.0, le=1.0, description="reject clips with a step changing more (a shot cut)")
    hidden: int = Field(256, ge=1, le=4096)

    def frames_needed(self) -> int:
        return self.frames + (1 if self.input == "differences" else 0)


class TrackingWorkload(Section):
    """Tracked patches (Wang & Gupta 2015): a triplet ranking loss, optionally cycle-consistency (Wang et al. 2019)."""
    kind: Literal["tracking"]
    patch_size: int = Field(16, ge=8, le=256)
    margin: float = Field(0.5, gt=0.0, le=2.0)
    hard_negative_fraction: float = Field(0.5, ge=0.0, le=1.0, description="hard negatives; the rest random")
    cycle_consistency: bool = False
    cycle_weight: float = Field(1.0, ge=0.0, le=100.0)
    gap: int = Field(4, ge=1, le=64, description="frames between anchor and positive")

    def frames_needed(self) -> int:
        return self.gap + 1


class VideoColorizationWorkload(Section):
    """Tracking by colorizing (Vondrick et al. 2018): copy colours from reference frames by attention."""
    kind: Literal["video_colorization"]
    references: int = Field(3, ge=1, le=16, description="colour reference frames before the target")
    clusters: int = Field(16, ge=2, le=256, description="k-means clusters of Lab ab, fitted on the training clips")
    temperature: float = Field(0.1, gt=0.0, le=100.0, description="of the attention softmax over cosine similarities "
                               "(0.1: measured sharper copies than 0.5)")
    target_gap: int = Field(1, ge=1, le=64, description="frames between the last reference and the target")

    def frames_needed(self) -> int:
        return self.references + self.target_gap


VIDEO_WORKLOADS = (FrameOrderWorkload, ArrowOfTimeWorkload, TrackingWorkload, VideoColorizationWorkload)
VIDEO_KINDS = tuple(cls.model_fields["kind"].annotation.__args__[0] for cls in VIDEO_WORKLOADS)


def check_clip_frames(workload, clip_frames: int) -> None:
    """A ValueError when the data's clips are shorter than the task needs."""
    needed = workload.frames_needed()
    if clip_frames < needed:
        raise ValueError(f"data.clip_frames ({clip_frames}) is shorter than workload.kind {workload.kind!r} needs "
                         f"({needed} frames with these settings): raise data.clip_frames or shorten the task's span")


