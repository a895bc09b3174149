"""LocalBank: the NegativeBank protocol in-process, from `num_shards` BankShards routed exactly
as the Ray-backed bank routes them, so it is the exactness reference for that one.

Queue mode: shard capacity size / S; row j of the overall push stream (a global row counter c
before the push) goes to shard (c + j) % S. Each shard keeps the last size / S rows of its
residue class, and those are exactly the residue classes of the last `size` rows pushed.
Instance mode: shard s holds ids [s c, (s + 1) c) with c = ceil(size / S), the last one fewer.
Every key carries its image id (queue: routed with its key; instance: the entry's id), and a query
with `query_ids` never sees its own id's keys among its negatives (workloads.bank.own_id).
Pushes with a `step` are idempotent by (step, rank); the pairs of the last SEEN_STEPS steps are
remembered, and a push older than all of them (once that many are remembered) is ignored too.
"""

import math

import torch

from workloads.bank.exact_info_nce import exact_info_nce
from workloads.bank.own_id import check_ids, merge_topk
from workloads.bank.shard import BankShard

SEEN_STEPS = 1024


class LocalBank:
    def __init__(self, size: int, dim: int, num_shards: int = 1, mode: str = "queue",
                 momentum: float = 0.5, dtype: torch.dtype | str = torch.float32, seed: int = 0,
                 device="cpu"):
        if not (isinstance(num_shards, int) and num_shards >= 1):
            raise ValueError(f"LocalBank: num_shards must be an int >= 1, got {num_shards!r}")
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"LocalBank: size must be an int >= 1, got {size!r}")
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"LocalBank: dim must be an int >= 1, got {dim!r}")
        if mode not in ("queue", "instance"):
            raise ValueError(f"LocalBank: mode must be 'queue' or 'instance', got {mode!r}")
        S = num_shards
        if mode == "queue" and size % S:
            raise ValueError(f"LocalBank: size must be divisible by num_shards in mode='queue', "
                             f"got size={size}, num_shards={S}")
        c = size // S if mode == "queue" else math.ceil(size / S)
        if (S - 1) * c >= size:  # instance mode only, e.g. size=5, num_shards=4: 2, 2, 1, 0
            raise ValueError(
                f"LocalBank: num_shards={S} leaves a shard without ids for size={size} (each "
                f"holds ceil(size / num_shards) = {c}); valid: (num_shards - 1) * c < size")
        self.size, self.dim, self.mode, self.num_shards = size, dim, mode, S
        self.shard_capacity = c
        self.shards = [BankShard(min(c, size - s * c), dim, mode, momentum, dtype,
                                 first_id=s * c, seed=seed, device=device) for s in range(S)]
        self.counter = 0  # rows pushed so far (queue mode routing)
        self.seen: dict[int, set[int]] = {}  # step -> ranks already pushed
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def count(self) -> int:
        return sum(shard.count for shard in self.shards)

    def _first_time(self, step: int | None, rank: int) -> bool:
        if step is None:
            return True
        if rank in self.seen.get(step, ()):
            return False
        if len(self.seen) >= SEEN_STEPS and step < min(self.seen):
            return False  # too old to tell whether it landed: never duplicate
        self.seen.setdefault(step, set()).add(rank)
        if len(self.seen) > SEEN_STEPS:
            del self.seen[min(self.seen)]
        return True

    def push(self, keys: torch.Tensor, ids=None, step: int | None = None, rank: int = 0) -> bool:
        """Returns False when the push is ignored as a repeat of (step, rank)."""
        if self.mode == "instance" and ids is None:
            raise ValueError("LocalBank.push: ids [B] (data-set sample ids in [0, size)) are "
                             "required in mode='instance'")
        if not (isinstance(keys, torch.Tensor) and keys.ndim == 2 and keys.shape[1] == self.dim):
            got = list(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"LocalBank.push: keys must be [B, {self.dim}], got {got}")
        if ids is not None:  # queue: the keys' image ids, -1 for unknown
            low, high = (0, self.size) if self.mode == "instance" else (-1, None)
            ids = check_ids(ids, keys.shape[0], "LocalBank.push", low, high)
        if not self._first_time(step, rank):
            return False
        keys = keys.detach()
        if self.mode == "queue":
            S = self.num_shards
            for s, shard in enumerate(self.shards):
                rows = slice((s - self.counter) % S, None, S)
                shard.push(keys[rows], None if ids is None else ids[rows])
            self.counter += keys.shape[0]
        else:
            owner = ids.to(torch.long) // self.shard_capacity
            for s in owner.unique().tolist():
                sel = owner == s
                self.shards[s].update(ids[sel], keys[sel.to(keys.device)])
        return True

    def info_nce(self, query, positive, temperature: float, step: int | None = None,
                 query_ids=None) -> torch.Tensor:
        partials = [shard.partial_lse(query, temperature, query_ids) for shard in self.shards]
        return exact_info_nce(query, positive, partials, temperature)

    def hardest(self, query: torch.Tensor, k: int, step: int | None = None,
                query_ids=None) -> torch.Tensor:
        return merge_topk([shard.topk(query, k, query_ids) for shard in self.shards], k, self.dim)

    def sample(self, n: int, step: int | None = None, with_ids: bool = False):
        if not (isinstance(n, int) and n >= 0):
            raise ValueError(f"LocalBank.sample: n must be an int >= 0, got {n!r}")
        counts = torch.tensor([shard.count for shard in self.shards], dtype=torch.float64)
        if counts.sum() == 0 or n == 0:
            keys, ids = torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.long)
        else:
            owner = torch.multinomial(counts, n, replacement=True, generator=self.generator)
            per_shard = torch.bincount(owner, minlength=self.num_shards).tolist()
            keys, ids = zip(*(shard.sample(m, self.generator, with_ids=True)
                              for shard, m in zip(self.shards, per_shard)))
            order = torch.randperm(n, generator=self.generator)
            keys, ids = torch.cat([k.cpu() for k in keys])[order], torch.cat(ids)[order]
        return (keys, ids) if with_ids else keys

    def keys(self, with_ids: bool = False):
        keys, ids = zip(*(shard.contents(with_ids=True) for shard in self.shards))
        keys, ids = torch.cat(keys), torch.cat([i.cpu() for i in ids])
        return (keys, ids) if with_ids else keys

    def state_dict(self) -> dict:
        return {"size": self.size, "dim": self.dim, "mode": self.mode,
                "num_shards": self.num_shards, "counter": self.counter,
                "generator": self.generator.get_state(),
                "seen": sorted((step, rank) for step, ranks in self.seen.items() for rank in ranks),
                "shards": [shard.state_dict() for shard in self.shards]}

    def load_state_dict(self, state: dict) -> None:
        for key in ("size", "dim", "mode", "num_shards"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"LocalBank.load_state_dict: state {key}={state.get(key)!r} does "
                                 f"not match this bank's {getattr(self, key)!r}")
        for shard, shard_state in zip(self.shards, state["shards"]):
            shard.load_state_dict(shard_state)
        self.counter = int(state["counter"])
        self.generator.set_state(state["generator"])
        self.seen = {}
        for step, rank in state["seen"]:
            self.seen.setdefault(int(step), set()).add(int(rank))

    def close(self) -> None:
        """Nothing to release in-process (the Ray bank kills its actors here)."""
