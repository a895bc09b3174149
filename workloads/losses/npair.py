"""N-pair loss, Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
NeurIPS 2016.

    loss = mean over b of log(1 + sum_m exp(a_b . n_bm - a_b . p_b))

computed as logsumexp over [0, a_b . n_bm - a_b . p_b] (stable). negatives is [B, M, D]: M
negatives per anchor (Sohn's multi-class form uses the other rows' positives; pass them
here). The paper's L2 penalty on the embeddings is left to the caller. Computed in float32
(float64 for float64 inputs); returns a scalar of that dtype.
"""

import torch

from workloads.losses.shapes import paired_rows


def npair_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    B, D = paired_rows("npair_loss", "anchor", anchor, positive)
    if negatives.ndim != 3 or negatives.shape[0] != B or negatives.shape[2] != D:
        raise ValueError(
            f"npair_loss: negatives must be [B, M, D] with B={B}, D={D}, "
            f"got {list(negatives.shape)}"
        )
    with torch.autocast(anchor.device.type, enabled=False):
        dtype = torch.promote_types(anchor.dtype, torch.float32)
        a, p, n = anchor.to(dtype), positive.to(dtype), negatives.to(dtype)
        diff = torch.einsum("bd,bmd->bm", a, n) - (a * p).sum(1, keepdim=True)  # [B, M]
        logits = torch.cat([diff.new_zeros(B, 1), diff], dim=1)
        return torch.logsumexp(logits, dim=1).mean()
