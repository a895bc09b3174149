"""Bank requests in flight: the shards work while the caller does; result() merges their replies."""
from __future__ import annotations

import time

import ray
import torch

from orchestrator.memory_bank.checks import tensor_bytes
from orchestrator.memory_bank.wire import from_wire, to_wire
from workloads.bank import exact_info_nce, merge_partials


class PendingQuery:
    """A request the shards are working on; result() waits for it (once) and merges the replies."""

    def __init__(self, bank, method: str, step, extra_for, finish, sent_bytes: int):
        self._bank, self._method, self._step, self._extra_for, self._finish = bank, method, step, extra_for, finish
        start = time.perf_counter()
        self._refs = bank._submit(method, step, extra_for)
        self._seconds = time.perf_counter() - start
        self._sent = sent_bytes
        self._done, self._value = False, None

    def result(self):
        if not self._done:
            start = time.perf_counter()
            replies = self._bank._finish(self._refs, self._method, self._step, self._extra_for)
            self._value = self._finish(replies)
            received = sum(tensor_bytes(r["result"]) for r in replies)
            self._bank._record_query(self._seconds + time.perf_counter() - start, self._sent + received)
            self._done, self._refs = True, None
        return self._value


class PendingInfoNCE(PendingQuery):
    """`bank.request_info_nce(query, temperature)`: partials on their way; loss(positive) merges them
    into the exact InfoNCE, differentiable w.r.t. query and positive (the query given here)."""

    def __init__(self, bank, query: torch.Tensor, temperature: float, step, query_ids=None):
        self.query, self.temperature = query, float(temperature)
        q = query.detach().to("cpu", torch.promote_types(query.dtype, torch.float32)).clone()
        ref = ray.put(to_wire(q))  # one copy in the object store, read by every shard
        super().__init__(bank, "partial_lse", step, lambda s: (ref, self.temperature, query_ids),
                         lambda replies: merge_partials([from_wire(r["result"]) for r in replies]),
                         tensor_bytes(q) * bank.num_shards)

    def partials(self):
        """The merged (max [B], sum_exp [B], weighted_keys [B, D]) over the whole bank."""
        return self.result()

    def loss(self, positive: torch.Tensor) -> torch.Tensor:
        M, Z, W = self.partials()
        device = self.query.device
        return exact_info_nce(self.query, positive, (M.to(device), Z.to(device), W.to(device)),
                              self.temperature)
