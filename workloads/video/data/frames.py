"""Decode a frame folder (ROOT/<clip>/<frame>.jpg|png, frames in name order) like a video file.

Same sizing rule as video files (short side to image_size, centre crop; see decode.py). A frame folder
has no frame rate of its own: fps None keeps every frame; with fps set, the folders' rate is read from
ROOT/fps.txt (one number) and frames are picked as for a video (frame on screen at k / fps).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from workloads.data.errors import DataError
from workloads.video.data.decode import EPSILON, centre_crop, scaled_size

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
RATE_FILE = "fps.txt"


def frame_files(folder: str) -> list[str]:
    """The frame images of a folder, sorted by name (hidden files and other files ignored)."""
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))


def resample_indices(count: int, rate: float, fps: float) -> list[int]:
    """Indices of the frames on screen at k / fps for a sequence of `count` frames at `rate` per second."""
    duration = count / rate
    targets = math.ceil(duration * fps - EPSILON)
    return [min(count - 1, math.floor(k * rate / fps + EPSILON)) for k in range(targets)]


def read_rate(root: str, fps: float | None) -> float | None:
    """The frame folders' own rate (ROOT/fps.txt) where fps asks for resampling; None where fps is None."""
    if fps is None:
        return None
    path = os.path.join(root, RATE_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{root}: frame folders have no frame rate of their own, so data.fps {fps} cannot be applied; "
                        f"set data.fps to null (every frame) or write the folders' rate into {RATE_FILE} in the root")
    with open(path) as handle:
        text = handle.read().strip()
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise DataError(f"{path}: {text!r} is not a frame rate; expected one positive number (frames per second)")
    return rate


def decode_frames(folder: str, name: str, image_size: int, fps: float | None = None, rate: float | None = None,
                  max_frames: int | None = None) -> torch.Tensor:
    """uint8 [F, 3, S, S] of the frames in `folder` (`name` in errors); rate: the folder's own (read_rate)."""
    files = frame_files(folder)
    if not files:
        raise DataError(f"{name}: no frames; expected images ({', '.join(IMAGE_EXTENSIONS)}) named in frame order")
    indices = list(range(len(files))) if fps is None else resample_indices(len(files), rate, fps)
    indices = indices[:max_frames] if max_frames else indices
    arrays: dict[int, np.ndarray] = {}   # a frame repeated by fps above the rate is decoded once
    for index in indices:
        if index not in arrays:
            arrays[index] = _read(os.path.join(folder, files[index]), f"{name}/{files[index]}", image_size)
    return torch.from_numpy(np.stack([arrays[i] for i in indices])).permute(0, 3, 1, 2).contiguous()


def _read(path: str, name: str, image_size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = scaled_size(image.width, image.height, image_size)
            if (width, height) != image.size:
                image = image.resize((width, height), Image.Resampling.BILINEAR)  # antialiased when shrinking
            return np.ascontiguousarray(centre_crop(np.asarray(image), image_size))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{name}: cannot decode image ({error}); expected a JPEG or PNG frame") from None
