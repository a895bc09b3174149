"""Contrastive loss, Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an
Invariant Mapping", CVPR 2006.

Over all unordered pairs i < j, with d_ij = ||x_i - x_j||:
    l_ij = d_ij^2                        if y_i == y_j
    l_ij = max(0, margin - d_ij)^2       otherwise
    loss = mean over the N(N-1)/2 pairs of l_ij

Squared distances use the dot-product form ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j clamped at 0
(like cdist's matmul path; O(N^2) memory), whose rounding error is ~eps * ||x||^2.
Computed in float32 (float64 for float64 inputs); returns a scalar of that dtype.
"""

import torch


def contrastive_loss(x: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"contrastive_loss: x must be [N, D] with N >= 2, got {list(x.shape)}")
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"contrastive_loss: labels must be [N] with N={x.shape[0]}, got {list(labels.shape)}"
        )
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        sq = x.pow(2).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0)  # no cdist: NaN grads at 0
        i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
        d2 = d2[i, j]
        # sqrt with a finite gradient at d2 = 0 (duplicated embeddings): eager clamp_min already
        # masks it, the where keeps both branches finite whatever the backward implementation.
        d = torch.where(d2 > 0, d2.clamp_min(torch.finfo(d2.dtype).tiny).sqrt(), 0.0)
        same = labels[i] == labels[j]
        return torch.where(same, d2, torch.relu(margin - d).pow(2)).mean()
