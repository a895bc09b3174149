"""The clips a video run trains and scores on, decoded once into memory.

Every clip has the same number of frames T (data.clip_frames) at the same size (data.image_size) and
frame rate (data.fps). A long video gives several clips; `sources` names the video each clip was cut
from, and splits keep all clips of one source on one side (frames of one video on both sides would leak).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class VideoDataset:
    clips: torch.Tensor                 # uint8 [N, T, 3, H, W]
    names: list[str]                    # one per clip, e.g. "bikes#0" (source and clip number)
    sources: list[str]                  # one per clip: the video (file or frame folder) it was cut from
    content_hash: str                   # sha256 of the encoded inputs and the decoding settings
    labels: torch.Tensor | None = None  # int64 [N] clip labels (labels.csv or class folders), or None
    classes: list[str] = field(default_factory=list)  # label names, index = label
    masks: torch.Tensor | None = None   # uint8 [N, T, H, W]: 0 background, k > 0 object k; or None
    tracks: torch.Tensor | None = None  # float32 [N, K, T, 2]: (y, x) centre of object k+1 per frame, pixels; or None
    origin: str = ""                    # the data URI it was loaded from

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def frames(self) -> int:
        return int(self.clips.shape[1])

    def subset(self, indices: torch.Tensor) -> "VideoDataset":
        index = indices.tolist()
        pick = (lambda t: None if t is None else t[indices])
        return VideoDataset(self.clips[indices], [self.names[i] for i in index], [self.sources[i] for i in index],
                            self.content_hash, pick(self.labels), self.classes, pick(self.masks), pick(self.tracks),
                            self.origin)
