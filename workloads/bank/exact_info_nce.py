"""The exact InfoNCE loss over a sharded bank, from per-shard partial log-sum-exp statistics.

Shard i returns, per query row b and over its keys k with logits l_k = q_b.k / tau:
    m_i = max_k l_k,   z_i = sum_k exp(l_k - m_i),   w_i = sum_k exp(l_k - m_i) k.
merge_partials combines them: M = max_i m_i, Z = sum_i z_i e^(m_i - M), W = sum_i w_i e^(m_i - M).
With s = q_b.p_b / tau the positive logit, A = max(s, M) and den = e^(s - A) + Z e^(M - A):
    l_b = A + log(den) - s                  (= info_nce_loss with the bank keys as negatives)
    p_pos = e^(s - A) / den                 (the softmax weight of the positive)
    sum_k p_k k = W e^(M - A) / den         (the softmax-weighted sum of the keys)
    dL/dq_b = (1 / (B tau)) [(p_pos - 1) p_b + sum_k p_k k]
    dL/dp_b = (1 / (B tau)) (p_pos - 1) q_b
The keys are constants: no gradient reaches the bank (nor the temperature, a plain number).
An empty bank (M = -inf, Z = 0) leaves the positive alone in its softmax: loss 0.
Computed in float32 (float64 for float64 queries); returns a scalar of that dtype.
"""

import torch
from torch.autograd.function import once_differentiable

Partial = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def merge_partials(partials: list[Partial]) -> Partial:
    """Log-sum-exp merge of per-shard (max [B], sum_exp [B], weighted_keys [B, D])."""
    if len(partials) == 0:
        raise ValueError(
            "merge_partials: partials must be a non-empty list of (max, sum_exp, weighted)")
    device = partials[0][0].device
    m = torch.stack([p[0].to(device) for p in partials])  # [S, B]
    z = torch.stack([p[1].to(device) for p in partials])
    w = torch.stack([p[2].to(device) for p in partials])  # [S, B, D]
    M = m.amax(dim=0)
    scale = torch.exp(m - torch.where(torch.isinf(M), 0.0, M))  # 0 for empty shards, no nan
    return M, (z * scale).sum(0), (w * scale[..., None]).sum(0)


class _ExactInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, positive, M, Z, W, temperature):
        s = (query * positive).sum(1) / temperature
        A = torch.maximum(s, M)
        e_pos, e_bank = torch.exp(s - A), torch.exp(M - A)  # e_bank = 0 for an empty bank
        den = e_pos + Z * e_bank
        ctx.save_for_backward(query, positive, e_pos / den, W * (e_bank / den)[:, None])
        ctx.temperature = temperature
        return (A + torch.log(den) - s).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, p, p_pos, weighted = ctx.saved_tensors
        c = grad / (q.shape[0] * ctx.temperature)
        d_q = c * ((p_pos - 1)[:, None] * p + weighted)
        d_p = c * (p_pos - 1)[:, None] * q if ctx.needs_input_grad[1] else None
        return d_q, d_p, None, None, None, None


def exact_info_nce(query: torch.Tensor, positive: torch.Tensor, partials_or_merged,
                   temperature: float) -> torch.Tensor:
    """partials_or_merged: a list of per-shard partials, or one merged (M, Z, W) triple."""
    if query.ndim != 2 or query.shape[0] < 1:
        raise ValueError(
            f"exact_info_nce: query must be [B, D] with B >= 1, got {list(query.shape)}")
    B, D = query.shape
    if positive.shape != query.shape:
        raise ValueError(
            f"exact_info_nce: positive must be [B, D] = {[B, D]}, got {list(positive.shape)}")
    if isinstance(temperature, torch.Tensor) and temperature.requires_grad:
        raise ValueError("exact_info_nce: temperature must be a number (no gradient flows to it)")
    if not float(temperature) > 0:
        raise ValueError(f"exact_info_nce: temperature must be > 0, got {temperature}")
    merged = partials_or_merged
    if not (isinstance(merged, (tuple, list)) and len(merged) == 3
            and all(isinstance(t, torch.Tensor) for t in merged)):
        merged = merge_partials(list(partials_or_merged))
    M, Z, W = merged
    if M.shape != (B,) or Z.shape != (B,) or W.shape != (B, D):
        raise ValueError(
            f"exact_info_nce: partials must be (max [B], sum_exp [B], weighted [B, D]) with "
            f"B={B}, D={D}, got {list(M.shape)}, {list(Z.shape)}, {list(W.shape)}")
    dtype = torch.promote_types(query.dtype, torch.float32)
    with torch.autocast(query.device.type, enabled=False):
        q, p = query.to(dtype), positive.to(dtype)
        M, Z, W = (t.detach().to(q.device, dtype) for t in (M, Z, W))
        return _ExactInfoNCE.apply(q, p, M, Z, W, float(temperature))
