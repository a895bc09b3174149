"""Weighted k-nearest-neighbour accuracy on frozen features (InstDisc protocol).

Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination":
features are L2-normalised, each test sample takes its k most cosine-similar training
samples, and neighbour j votes for its class with weight exp(sim_j / temperature). The
predicted class is the one with the largest summed weight (ties go to the lower class index).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy"]


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except Exception as exc:  # pragma: no cover - message path
        raise ValueError(f"{name} must be a tensor or array-like, got {type(value).__name__}") from exc


def check_features_labels(
    train_x, train_y, test_x, test_y
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a (features, labels) train/test split and return it as tensors.

    Features must be 2-D ``[N, D]`` with the same D for train and test, labels 1-D
    non-negative integers with one label per feature row, and neither set may be empty.
    """
    train_x = _as_tensor(train_x, "train_x")
    train_y = _as_tensor(train_y, "train_y")
    test_x = _as_tensor(test_x, "test_x")
    test_y = _as_tensor(test_y, "test_y")
    for name, x in (("train_x", train_x), ("test_x", test_x)):
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D [N, D] features, got shape {tuple(x.shape)}")
        if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty: need at least one sample (row)")
        if x.shape[1] == 0:
            raise ValueError(f"{name} has feature dimension 0: need D >= 1")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train_x and test_x must have the same feature dimension, got {train_x.shape[1]} and {test_x.shape[1]}"
        )
    for name, y, x_name, x in (("train_y", train_y, "train_x", train_x), ("test_y", test_y, "test_x", test_x)):
        if y.dim() != 1:
            raise ValueError(f"{name} must be 1-D [N] class labels, got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} has {y.shape[0]} labels but {x_name} has {x.shape[0]} rows; they must match")
        if int(y.min()) < 0:
            raise ValueError(f"{name} must hold class labels >= 0, got {int(y.min())}")
    return train_x, train_y.long(), test_x, test_y.long()


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy in [0, 1] of the temperature-weighted kNN classifier.

    Args:
        train_x, test_x: features ``[N, D]`` (normalised to unit length here).
        train_y, test_y: integer class labels ``[N]``.
        k: neighbours per test sample, >= 1; clipped to the number of training samples.
        temperature: > 0; neighbour weight is ``exp(cosine_similarity / temperature)``.
        num_classes: number of classes; default ``max(label) + 1`` over train and test.
        chunk_size: test rows scored at once (memory is ``chunk_size x N_train``).

    Deterministic: the same inputs give the same answer; ties in the vote go to the
    lowest class index. Runs on ``train_x``'s device, in float32 (or float64 if given).
    """
    train_x, train_y, test_x, test_y = check_features_labels(train_x, train_y, test_x, test_y)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    max_label = max(int(train_y.max()), int(test_y.max()))
    if num_classes is None:
        num_classes = max_label + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= max_label:
        raise ValueError(f"num_classes must be an integer > the largest label ({max_label}), got {num_classes!r}")

    device = train_x.device
    dtype = torch.float64 if train_x.dtype == torch.float64 else torch.float32
    train = F.normalize(train_x.to(dtype), dim=1)
    train_y = train_y.to(device)
    k = min(k, train.shape[0])

    correct = 0
    for start in range(0, test_x.shape[0], chunk_size):
        query = F.normalize(test_x[start : start + chunk_size].to(device=device, dtype=dtype), dim=1)
        sim = query @ train.T  # [c, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)  # [c, k]
        # exp((sim - max) / tau): the same vote up to a per-row factor, without overflow at small tau.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=device, dtype=dtype)
        votes.scatter_add_(1, train_y[top_idx], weights)
        pred = votes.argmax(dim=1)
        correct += int((pred == test_y[start : start + chunk_size].to(device)).sum())
    return correct / test_x.shape[0]
