"""Decode one video file with PyAV into square RGB uint8 frames, resampled to a frame rate.

Sizing rule (shared with frame folders): scale so the SHORT side is image_size, then centre-crop the
long side to image_size. Nothing is stretched, so a moving object keeps its shape and speed ratio.

Resampling: frame k of the output is the frame on screen at time k / fps (the last frame whose
timestamp is <= k / fps), for every k / fps before the end of the video (last timestamp + one frame
duration). So a 10 s video at fps 8 gives 80 frames whatever its own rate; fps above the file's rate
repeats frames. fps None keeps every decoded frame.
"""
from __future__ import annotations

import math

import av
import numpy as np
import torch

from workloads.data.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
EPSILON = 1e-6  # seconds: timestamps are rationals turned into floats; a target equal to a timestamp shows that frame


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short side equal to size, aspect ratio kept (the sizing rule above)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window of an [H, W, C] array."""
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def decode_video(path: str, name: str, image_size: int, fps: float | None = None,
                 max_frames: int | None = None) -> torch.Tensor:
    """uint8 [F, 3, S, S] of the file at `path` (see the module docstring); `name` is used in errors.

    max_frames stops decoding early (a long video of which only the first clips are kept).
    """
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{name}: no video stream; expected a video file (mp4, avi, webm, mkv)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: several times faster on multi-core hosts
            frames = _frames(container, stream, image_size, fps, max_frames)
    except av.FFmpegError as error:
        raise DataError(f"{name}: cannot decode video ({error}); expected a video file FFmpeg can read "
                        f"({', '.join(e[1:] for e in VIDEO_EXTENSIONS)})") from None
    if not frames:
        raise DataError(f"{name}: the video has no frames; expected a video file with at least one decodable frame")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def _frames(container, stream, image_size: int, fps: float | None, max_frames: int | None) -> list[np.ndarray]:
    rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    limit = max_frames or math.inf
    out: list[np.ndarray] = []
    previous = None             # (frame, its time, its array once converted): on screen until the next frame
    start = None
    for index, frame in enumerate(container.decode(stream)):
        time = frame.time if frame.time is not None else index / (rate or 25.0)
        start = time if start is None else start
        time -= start           # a stream's first timestamp need not be 0
        if fps is None:
            out.append(_convert(frame, image_size))
        else:
            if previous is not None:
                _emit(previous, time, fps, image_size, out, limit)
            previous = [frame, time, None]
        if len(out) >= limit:
            return out
    if fps is not None and previous is not None:
        _emit(previous, previous[1] + (1.0 / rate if rate else 0.0), fps, image_size, out, limit)
    return out


def _emit(previous: list, until: float, fps: float, image_size: int, out: list, limit: float) -> None:
    """Append the previous frame once per target time k / fps in [its time, until); k = len(out)."""
    while len(out) < limit and len(out) / fps < until - EPSILON:
        if previous[2] is None:  # converted once, however often it repeats
            previous[2] = _convert(previous[0], image_size)
        out.append(previous[2])


def _convert(frame, image_size: int) -> np.ndarray:
    width, height = scaled_size(frame.width, frame.height, image_size)
    # swscale's area filter: a proper downscale (no aliasing) at C speed, before any RGB copy of full size
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    return np.ascontiguousarray(centre_crop(rgb, image_size))
