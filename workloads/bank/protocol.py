"""The memory bank as the training step sees it: a small protocol that both the in-process
LocalBank (workloads.bank.local) and the Ray-backed ShardedMemoryBank (orchestrator.memory_bank.client)
satisfy, so that `workloads` never imports Ray.

Staleness contract. At step t, every worker first queries the bank (info_nce / hardest /
sample) and only then pushes its step-t keys with push(keys, ids, step=t, rank=r). So the bank used
at step t holds every worker's pushes up to step t - 1, and none of step t: a query never sees keys
of its own step (the positives of the current batch are not also negatives). Pushes are idempotent
by (step, rank): a repeated push of the same (step, rank), e.g. a retried remote call, is ignored,
so each worker's step lands exactly once. `step` must be a global step that only grows over a run
(not reset each epoch); without `step`, every push is applied.

Own-image contract. Every key carries the data-set id of its image, in both modes (queue: the ids
pushed with it, -1 when unknown; instance: the entry's id). A query given `query_ids` [B] never
has a key of its own id among its negatives: `info_nce` is exact over the other keys (value and
gradient), `hardest` never returns them, and `sample(..., with_ids=True)` returns the ids with
which the caller drops them (workloads.methods.bank_objective masks those logits). In instance mode this
is InstDisc's rule: the entry of the query's own image is never its negative. The id -1 matches
nothing. The ids are part of state_dict(); a state saved without them loads with ids -1.
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
        """keys [B, D] with their data-set image ids [B]. Queue: append (keys, ids) (FIFO
        together, the last `size` stay); ids=None stores -1 (unknown: never excluded). Instance:
        ids in [0, size) are required and each entry becomes normalize(m v + (1 - m) f)."""

    # `step` on queries: the caller's global step; a bank shared by several workers waits until
    # every worker's pushes of step - 1 have landed (an in-process bank has nothing to wait for).
    # `query_ids` [B] long: the image id of each query row; its keys are excluded for that row.
    def info_nce(self, query: torch.Tensor, positive: torch.Tensor, temperature: float,
                 step: int | None = None, query_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Exactly info_nce_loss(query, positive, negatives, temperature) where row b's negatives
        are the keys whose id is not query_ids[b] (all keys without query_ids), differentiable
        w.r.t. query and positive (the keys are constants)."""

    def hardest(self, query: torch.Tensor, k: int, step: int | None = None,
                query_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, k', D]: per query the k' keys with the largest dot product among the keys not of
        its own id, most similar first; k' = min(k, the fewest such keys of any query)."""

    def sample(self, n: int, step: int | None = None, with_ids: bool = False):
        """[n, D] keys drawn uniformly with replacement ([0, D] from an empty bank); with_ids:
        (keys, their image ids [n] long)."""

    def keys(self, with_ids: bool = False):
        """[n, D] float32, the current contents (instance mode: row i is id i); with_ids:
        (keys, their image ids [n] long)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...
