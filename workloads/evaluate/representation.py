"""Representation quality metrics of Wang & Isola 2020, "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere".

Both take embeddings as given and do NOT normalise them: pass L2-normalised embeddings (as the
projection head produces) to get the paper's numbers. Distances are Euclidean. Both are
differentiable, so they can also serve as losses.
"""

from __future__ import annotations

import math

import torch

__all__ = ["alignment", "uniformity"]


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """Mean over i of ``||z1_i - z2_i|| ** alpha`` for positive pairs ``(z1_i, z2_i)``.

    ``z1``, ``z2``: ``[N, D]`` embeddings of two views, row i of one paired with row i of the
    other; not normalised here. ``alpha > 0``. Returns a 0-d tensor (lower is better aligned).
    """
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor [N, D], got {getattr(z, 'shape', type(z).__name__)}")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] == 0:
        raise ValueError("z1 and z2 are empty: need at least one pair (N >= 1)")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    return (z1 - z2).norm(dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2) -> torch.Tensor:
    """``log`` of the mean over pairs i < j of ``exp(-t * ||z_i - z_j||^2)``.

    ``z``: ``[N, D]`` embeddings with N >= 2, not normalised here. ``t > 0``. Computed as
    ``logsumexp(-t * d^2) - log(#pairs)`` over the upper triangle, so far-apart points give a
    large negative number instead of ``log(0) = -inf``; float16/bfloat16 inputs are computed
    in float32. Returns a 0-d tensor (lower is more uniform).
    """
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be a 2-D tensor [N, D], got {getattr(z, 'shape', type(z).__name__)}")
    if z.shape[0] < 2:
        raise ValueError(f"z must have at least 2 rows to form a pair, got {z.shape[0]}")
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t!r}")
    sq_dist = torch.pdist(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, p=2).pow(2)
    return torch.logsumexp(-t * sq_dist, dim=0) - math.log(sq_dist.numel())
