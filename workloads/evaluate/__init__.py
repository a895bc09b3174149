"""Downstream evaluation of frozen representations (torch only).

- ``knn_accuracy``: temperature-weighted kNN (InstDisc protocol)
- ``linear_probe_accuracy``: a linear classifier on frozen features
- ``alignment``, ``uniformity``: Wang & Isola 2020 representation metrics
- ``extract_features``: run a backbone over uint8 images to get those features
"""

from .features import extract_features
from .knn import knn_accuracy
from .linear_probe import linear_probe_accuracy
from .representation import alignment, uniformity

__all__ = [
    "knn_accuracy",
    "linear_probe_accuracy",
    "alignment",
    "uniformity",
    "extract_features",
]
