"""Lifted structured loss, Song, Xiang, Jegelka & Savarese, "Deep Metric Learning via Lifted
Structured Feature Embedding", CVPR 2016 (the hard-max form, on squared distances).

With D_ij = ||x_i - x_j||^2 and P the unordered positive pairs {i < j : y_i == y_j}:
    L_ij = D_ij + max( max_{k: y_k != y_i} (margin - D_ik), max_{l: y_l != y_j} (margin - D_jl) )
    loss = 1 / (2|P|) * sum over P of max(0, L_ij)^2,      0 when P is empty.
A side with no negative contributes nothing to the max (max over an empty set = -inf), so a
batch with a single class (no negatives at all) has L_ij = -inf everywhere and loss 0.

Squared distances use the dot-product form ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j clamped at 0
(like cdist's matmul path; O(N^2) memory), whose rounding error is ~eps * ||x||^2.
Computed in float32 (float64 for float64 inputs); returns a scalar of that dtype.
"""

import torch


def lifted_structured_loss(x: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"lifted_structured_loss: x must be [N, D], got {list(x.shape)}")
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"lifted_structured_loss: labels must be [N] with N={x.shape[0]}, "
            f"got {list(labels.shape)}"
        )
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        sq = x.pow(2).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0)  # no cdist: NaN grads at 0
        same = labels[:, None] == labels[None, :]
        # hardest negative of each row: max_k (margin - D_ik), -inf where the row has none
        hard = (margin - d2).masked_fill(same, float("-inf")).amax(1)
        i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
        pos = same[i, j]
        i, j = i[pos], j[pos]
        if len(i) == 0:
            return x[:0].sum()  # no positive pair: an exact 0 that is still part of the graph
        l_ij = d2[i, j] + torch.maximum(hard[i], hard[j])
        return torch.relu(l_ij).pow(2).sum() / (2 * len(i))
