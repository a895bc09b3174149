"""Losses whose negatives come from a memory bank: exact InfoNCE over the whole bank, sampled, or hardest.

With `query_ids` (the data-set ids of the query rows), no query's own image is its negative: the
bank excludes those keys on its shards for `exact` and `hardest`. For `sampled`, the n draws are
shared by all rows (one [n, D] matrix, not B of them) and come back with their ids; row b's
negatives are the draws whose id is not its own (their logits are masked here, so the pure losses
of workloads.losses need no mask). That is a uniform sample of the other keys, of n minus a few.
"""
from dataclasses import dataclass

import torch

from workloads.bank.own_id import own_mask
from workloads.bank.protocol import NegativeBank
from workloads.losses import (
    contrastive_loss,
    info_nce_loss,
    lifted_structured_loss,
    npair_loss,
    triplet_loss,
)
from workloads.methods.negatives import NEGATIVES


def check_bank_loss(negatives: str, loss: str) -> None:
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown bank negatives {negatives!r}; valid: {', '.join(NEGATIVES)}")
    if loss not in NEGATIVES[negatives]:
        raise ValueError(f"loss {loss!r} cannot use {negatives!r} bank negatives; valid: {', '.join(NEGATIVES[negatives])}")


def masked_softmax_loss(query, positive, negatives, excluded, scale: float) -> torch.Tensor:
    """Mean over b of logsumexp([s_b+, s_bj for j not excluded[b]]) - s_b+, with s_b+ = scale q_b.p_b
    and s_bj = scale q_b.n_j: info_nce_loss (scale 1 / tau) or npair_loss (scale 1) over shared
    negatives [n, D] of which row b skips those with excluded[b, j] (its own image's keys)."""
    with torch.autocast(query.device.type, enabled=False):
        dtype = torch.promote_types(query.dtype, torch.float32)
        q, p, n = query.to(dtype), positive.to(dtype), negatives.to(dtype)
        pos = (q * p).sum(1, keepdim=True) * scale
        neg = (q @ n.T * scale).masked_fill(excluded, float("-inf"))
        return (torch.logsumexp(torch.cat([pos, neg], 1), dim=1) - pos[:, 0]).mean()


@dataclass
class BankObjective:
    bank: NegativeBank
    negatives: str  # exact | sampled | hardest
    loss: str
    temperature: float
    margin: float
    k: int = 16  # hardest
    n: int = 4096  # sampled

    def __post_init__(self):
        check_bank_loss(self.negatives, self.loss)

    def request(self, query: torch.Tensor, step: int | None, query_ids: torch.Tensor | None = None):
        """Start the bank's work for this step's queries early, where the bank can (a remote bank
        computes its partials while the caller runs the key encoder); finish with __call__."""
        start = getattr(self.bank, "request_info_nce", None)
        if self.negatives == "exact" and start is not None:
            return start(query, self.temperature, step=step, query_ids=query_ids)
        return None

    def __call__(self, query: torch.Tensor, positive: torch.Tensor, step: int | None = None, pending=None,
                 query_ids: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, D] (differentiable), positive [B, D] keys of the other view (constants),
        query_ids [B] the rows' image ids (their own keys are never negatives)."""
        if pending is not None:
            return pending.loss(positive)
        if self.negatives == "exact":
            return self.bank.info_nce(query, positive, self.temperature, step=step, query_ids=query_ids)
        if self.negatives == "sampled":
            shared, ids = self.bank.sample(self.n, step=step, with_ids=True)
            shared = shared.to(query.device)
            if len(shared) == 0:  # an empty bank: in-batch negatives until the first push lands
                return info_nce_loss(query, positive, None, self.temperature)
            own = own_mask(query_ids, ids.long())
            if own is not None and bool(own.any()):
                scale = 1.0 if self.loss == "npair" else 1.0 / self.temperature
                return masked_softmax_loss(query, positive, shared, own.to(query.device), scale)
            if self.loss == "npair":
                return npair_loss(query, positive, shared.unsqueeze(0).expand(len(query), -1, -1))
            return info_nce_loss(query, positive, shared, self.temperature)
        hard = self.bank.hardest(query.detach(), self.k, step=step, query_ids=query_ids).to(query.device)
        if hard.shape[1] == 0:
            hard = positive.roll(1, dims=0).unsqueeze(1)
        return self._with_hard_negatives(query, positive, hard)

    def _with_hard_negatives(self, query, positive, hard) -> torch.Tensor:
        if self.loss == "info_nce":
            return info_nce_loss(query, positive, hard, self.temperature)
        if self.loss == "npair":
            return npair_loss(query, positive, hard)
        if self.loss == "triplet":
            return triplet_loss(query, positive, hard[:, 0], self.margin)
        # pair losses: the query and its positive share a label, every mined negative is its own class
        batch, count = hard.shape[:2]
        ids = torch.arange(batch, device=query.device)
        others = batch + torch.arange(batch * count, device=query.device)
        points = torch.cat([query, positive, hard.reshape(batch * count, -1)])
        fn = contrastive_loss if self.loss == "contrastive" else lifted_structured_loss
        return fn(points, torch.cat([ids, ids, others]), self.margin)
