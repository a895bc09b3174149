"""Losses whose negatives come from a memory bank: exact InfoNCE over the whole bank, sampled, or hardest."""
from dataclasses import dataclass

import torch

from .bank.protocol import NegativeBank
from .losses import contrastive_loss, info_nce_loss, lifted_structured_loss, npair_loss, triplet_loss

from .negatives import NEGATIVES


def check_bank_loss(negatives: str, loss: str) -> None:
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown bank negatives {negatives!r}; valid: {', '.join(NEGATIVES)}")
    if loss not in NEGATIVES[negatives]:
        raise ValueError(f"loss {loss!r} cannot use {negatives!r} bank negatives; valid: {', '.join(NEGATIVES[negatives])}")


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

    def request(self, query: torch.Tensor, step: int | None):
        """Start the bank's work for this step's queries early, where the bank can (a remote bank
        computes its partials while the caller runs the key encoder); finish with __call__."""
        start = getattr(self.bank, "request_info_nce", None)
        if self.negatives == "exact" and start is not None:
            return start(query, self.temperature, step=step)
        return None

    def __call__(self, query: torch.Tensor, positive: torch.Tensor, step: int | None = None, pending=None) -> torch.Tensor:
        """query [B, D] (differentiable), positive [B, D] keys of the other view (constants)."""
        if pending is not None:
            return pending.loss(positive)
        if self.negatives == "exact":
            return self.bank.info_nce(query, positive, self.temperature, step=step)
        if self.negatives == "sampled":
            shared = self.bank.sample(self.n, step=step).to(query.device)
            if len(shared) == 0:  # an empty bank: in-batch negatives until the first push lands
                return info_nce_loss(query, positive, None, self.temperature)
            if self.loss == "npair":
                return npair_loss(query, positive, shared.unsqueeze(0).expand(len(query), -1, -1))
            return info_nce_loss(query, positive, shared, self.temperature)
        hard = self.bank.hardest(query.detach(), self.k, step=step).to(query.device)
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
