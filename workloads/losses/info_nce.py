"""InfoNCE, van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive
Coding", 2018.

For row b, with logits s_b+ = q_b . p_b / tau and s_bk = q_b . n_k / tau:
    l_b  = -log( exp(s_b+) / (exp(s_b+) + sum_k exp(s_bk)) ) = logsumexp([s_b+, s_b.]) - s_b+
    loss = mean over b of l_b
negatives: [K, D] shared by all rows (e.g. a memory bank), [B, K, D] per row, or None for
in-batch negatives (row b's negatives are the positives p_j of the other rows j != b).
No normalisation (the projection head normalises). Computed in float32 (float64 for float64
inputs); returns a scalar of that dtype.
"""

import torch
import torch.nn.functional as F

from workloads.losses.shapes import paired_rows


def info_nce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    B, D = paired_rows("info_nce_loss", "query", query, positive)
    if negatives is not None and not (
        (negatives.ndim == 2 and negatives.shape[1] == D)
        or (negatives.ndim == 3 and negatives.shape[0] == B and negatives.shape[2] == D)
    ):
        raise ValueError(
            f"info_nce_loss: negatives must be [K, D] or [B, K, D] with B={B}, D={D}, "
            f"or None, got {list(negatives.shape)}"
        )
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"info_nce_loss: temperature must be > 0, got {temperature}")
    with torch.autocast(query.device.type, enabled=False):
        dtype = torch.promote_types(query.dtype, torch.float32)
        q, p = query.to(dtype), positive.to(dtype)
        if negatives is None:  # [B, B]: the diagonal is the positive, the rest are negatives
            return F.cross_entropy(q @ p.T / temperature, torch.arange(B, device=q.device))
        n = negatives.to(dtype)
        neg = q @ n.T if n.ndim == 2 else torch.einsum("bd,bkd->bk", q, n)
        logits = torch.cat([(q * p).sum(1, keepdim=True), neg], dim=1) / temperature
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
