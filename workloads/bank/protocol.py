"""The memory bank as the training step sees it: a small protocol that both the in-process
LocalBank (workloads.bank.local) and the Ray-backed ShardedMemoryBank (orchestrator.memory_bank)
satisfy, so that `workloads` never imports Ray.

Staleness contract. At step t, every worker first queries the bank (info_nce / hardest /
sample) and only then pushes its step-t keys with push(keys, step=t, rank=r). So the bank used at
step t holds every worker's pushes up to step t - 1, and none of step t: a query never sees keys
of its own step (the positives of the current batch are not also negatives). Pushes are idempotent
by (step, rank): a repeated push of the same (step, rank), e.g. a retried remote call, is ignored,
so each worker's step lands exactly once. `step` must be a global step that only grows over a run
(not reset each epoch); without `step`, every push is applied.
"""

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class NegativeBank(Protocol):
    size: int  # capacity: K keys (queue) or N ids (instance)
    dim: int
    mode: str  # "queue" or "instance"

    def push(self, keys: torch.Tensor, ids: torch.Tensor | None = None,
             step: int | None = None, rank: int = 0):
        """Queue: append keys [B, D] (FIFO, the last `size` stay). Instance: ids [B] are
        required and each entry becomes normalize(m v + (1 - m) f)."""

    # `step` on queries: the caller's global step; a bank shared by several workers waits until
    # every worker's pushes of step - 1 have landed (an in-process bank has nothing to wait for).
    def info_nce(self, query: torch.Tensor, positive: torch.Tensor,
                 temperature: float, step: int | None = None) -> torch.Tensor:
        """Exactly info_nce_loss(query, positive, keys(), temperature), differentiable w.r.t.
        query and positive (the keys are constants)."""

    def hardest(self, query: torch.Tensor, k: int, step: int | None = None) -> torch.Tensor:
        """[B, k, D]: per query the k keys with the largest dot product, most similar first
        (k is capped at the number of keys held)."""

    def sample(self, n: int, step: int | None = None) -> torch.Tensor:
        """[n, D] keys drawn uniformly with replacement ([0, D] from an empty bank)."""

    def keys(self) -> torch.Tensor:
        """[n, D] float32, the current contents (instance mode: row i is id i)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...
