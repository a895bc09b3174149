"""Triplet loss, Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face
Recognition and Clustering", CVPR 2015.

    loss = mean over b of max(0, ||a_b - p_b||^2 - ||a_b - n_b||^2 + margin)

Squared Euclidean distances, no normalisation. Computed in float32 (float64 for float64
inputs); returns a scalar of that dtype.
"""

import torch


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> torch.Tensor:
    if anchor.ndim != 2 or anchor.shape[0] < 1:
        raise ValueError(
            f"triplet_loss: anchor must be [B, D] with B >= 1, got {list(anchor.shape)}"
        )
    for name, t in (("positive", positive), ("negative", negative)):
        if t.shape != anchor.shape:
            raise ValueError(
                f"triplet_loss: {name} must be [B, D] = {list(anchor.shape)} like anchor, "
                f"got {list(t.shape)}"
            )
    dtype = torch.promote_types(anchor.dtype, torch.float32)
    a, p, n = anchor.to(dtype), positive.to(dtype), negative.to(dtype)
    d_ap = (a - p).pow(2).sum(1)  # differences, not cdist: finite gradients at zero distance
    d_an = (a - n).pow(2).sum(1)
    return torch.relu(d_ap - d_an + margin).mean()
