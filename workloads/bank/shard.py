"""One shard of the memory bank: its storage, and the math that runs where its keys live.

mode="queue" (MoCo, XBM): a FIFO ring buffer that keeps the last `capacity` rows pushed.
mode="instance" (InstDisc): one entry per global id in [first_id, first_id + capacity), updated as
    v <- normalize(m * v + (1 - m) * f).
Every key carries the data-set id of its image (`ids`, long): queue mode stores the ids pushed
beside the keys (-1: unknown), instance mode the entry's own id. Queries with `query_ids` skip
the keys of the query's own id (workloads.bank.own_id).
Instance entries start as random unit vectors: row of id i is drawn from a generator seeded by
(seed, i // INIT_BLOCK), so a bank's initial content depends only on (seed, dim), never on how it
is sharded. Keys are stored in `dtype` (float32, float16 or bfloat16) and every computation runs
in float32 (float64 for float64 queries). Nothing loops over rows in Python; partial_lse and topk
go over the keys in chunks of `chunk` rows, so their memory is O(B * chunk).
"""

import torch
import torch.nn.functional as F

from workloads.bank.own_id import UNKNOWN, check_ids, own_mask

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INIT_BLOCK = 1 << 14
CHUNK = 1 << 14
LSE_CHUNK = 1 << 12  # [B, chunk] logits that stay in cache (with the in-place exp: 1.4-1.9x at B = 256)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"BankShard: {message}")


def _rows(x: torch.Tensor, dim: int, name: str) -> None:
    _check(isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim == 2
           and x.shape[1] == dim, f"{name} must be a floating tensor [n, {dim}], got "
           f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _init_unit_rows(buffer: torch.Tensor, first: int, seed: int) -> None:
    """Fills buffer (the rows of ids first, first + 1, ...) with random unit vectors, each block
    of INIT_BLOCK ids drawn from its own generator; memory beyond the buffer is one block."""
    n, dim = buffer.shape
    for b in range(first // INIT_BLOCK, (first + n - 1) // INIT_BLOCK + 1):
        g = torch.Generator().manual_seed((seed * 0x9E3779B1 + b) % (1 << 63))
        block = F.normalize(torch.randn(INIT_BLOCK, dim, generator=g), dim=1)
        lo, hi = max(first, b * INIT_BLOCK), min(first + n, (b + 1) * INIT_BLOCK)
        buffer[lo - first:hi - first] = block[lo - b * INIT_BLOCK:hi - b * INIT_BLOCK]


class BankShard:
    def __init__(self, capacity: int, dim: int, mode: str = "queue", momentum: float = 0.5,
                 dtype: torch.dtype | str = torch.float32, first_id: int = 0, seed: int = 0,
                 device="cpu"):
        _check(isinstance(capacity, int) and capacity >= 1,
               f"capacity must be an int >= 1, got {capacity!r}")
        _check(isinstance(dim, int) and dim >= 1, f"dim must be an int >= 1, got {dim!r}")
        _check(mode in ("queue", "instance"), f"mode must be 'queue' or 'instance', got {mode!r}")
        _check(isinstance(momentum, (int, float)) and 0 <= momentum < 1,
               f"momentum must be a number in [0, 1), got {momentum!r}")
        dtype = DTYPES.get(dtype, dtype)
        _check(dtype in DTYPES.values(), f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        _check(isinstance(first_id, int) and first_id >= 0,
               f"first_id must be an int >= 0, got {first_id!r}")
        self.capacity, self.dim, self.mode, self.momentum = capacity, dim, mode, float(momentum)
        self.dtype, self.first_id, self.device = dtype, first_id, torch.device(device)
        self.buffer = torch.zeros(capacity, dim, dtype=dtype, device=self.device)
        self.ids = self._initial_ids()
        self.ptr, self._count = 0, 0  # queue: next row written, rows filled so far
        if mode == "instance":
            _init_unit_rows(self.buffer, first_id, seed)
            self._count = capacity

    def _initial_ids(self) -> torch.Tensor:
        if self.mode == "instance":
            return torch.arange(self.first_id, self.first_id + self.capacity, device=self.device)
        return torch.full((self.capacity,), UNKNOWN, dtype=torch.long, device=self.device)

    @property
    def count(self) -> int:
        return self._count

    def push(self, keys: torch.Tensor, ids=None) -> None:
        """Queue mode: row j of `keys` (and its image id ids[j], -1 when ids is None) goes to ring
        slot (ptr + j) % capacity; only the last `capacity` rows are written (the earlier ones
        would be overwritten anyway)."""
        _check(self.mode == "queue",
               "push is for mode='queue'; use update(ids, keys) in mode='instance'")
        _rows(keys, self.dim, "keys")
        _check(bool(torch.isfinite(keys).all()), "keys contain NaN or inf")
        n = keys.shape[0]
        try:
            ids = (torch.full((n,), UNKNOWN, dtype=torch.long) if ids is None
                   else check_ids(ids, n, "BankShard.push"))
        except ValueError as error:
            raise ValueError(f"BankShard: {error}") from None
        keep = min(n, self.capacity)
        slots = (self.ptr + torch.arange(n - keep, n, device=self.device)) % self.capacity
        self.buffer[slots] = keys[n - keep:].to(self.device, self.dtype)
        self.ids[slots] = ids[n - keep:].to(self.device)
        self.ptr = (self.ptr + n) % self.capacity
        self._count = min(self._count + n, self.capacity)

    def update(self, ids, keys: torch.Tensor) -> None:
        """Instance mode: v <- normalize(m v + (1 - m) f) for each (id, f), in order. Repeated ids
        in one call are applied one after another: round r updates every id's r-th occurrence."""
        _check(self.mode == "instance",
               "update is for mode='instance'; use push(keys) in mode='queue'")
        _rows(keys, self.dim, "keys")
        ids = torch.as_tensor(ids, device=self.device)
        integer = not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool)
        _check(ids.ndim == 1 and ids.shape[0] == keys.shape[0] and integer,
               f"ids must be an integer tensor [{keys.shape[0]}], "
               f"got {ids.dtype} {list(ids.shape)}")
        _check(bool(torch.isfinite(keys).all()), "keys contain NaN or inf")
        if ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        end = self.first_id + self.capacity
        _check(lo >= self.first_id and hi < end,
               f"ids must lie in [{self.first_id}, {end}), got values in [{lo}, {hi}]")
        local = ids.long() - self.first_id
        sorted_ids, order = torch.sort(local, stable=True)
        _, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
        starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        occurrence = torch.empty_like(local)
        occurrence[order] = torch.arange(len(local), device=self.device) - starts
        f = keys.to(self.device, torch.float32)
        m = self.momentum
        for r in range(int(counts.max())):  # one round per repeat, usually a single round
            sel = occurrence == r
            rows = local[sel]
            v = self.buffer[rows].float()
            self.buffer[rows] = F.normalize(m * v + (1 - m) * f[sel], dim=1).to(self.dtype)

    def _valid(self) -> torch.Tensor:
        return self.buffer[: self._count]  # queue rows fill from 0; instance rows are all valid

    def _query(self, query: torch.Tensor, query_ids=None):
        _rows(query, self.dim, "query")
        if query_ids is not None:
            try:
                query_ids = check_ids(query_ids, query.shape[0], "query_ids").to(self.device)
            except ValueError as error:
                raise ValueError(f"BankShard: {error}") from None
        q = query.detach().to(self.device, torch.promote_types(query.dtype, torch.float32))
        return q, query_ids

    @torch.no_grad()
    def partial_lse(self, query: torch.Tensor, temperature: float, query_ids=None,
                    chunk: int = LSE_CHUNK):
        """Over this shard's keys k, with l = (q / temperature).k (float32, float64 for float64 q):
        (max l [B], sum exp(l - max) [B], sum exp(l - max) k [B, D]), on the query's device.
        With query_ids [B], row b skips the keys whose id is query_ids[b]. A row without keys
        (an empty shard, or only its own id's keys) gives (-inf, 0, 0)."""
        _check(temperature > 0, f"temperature must be > 0, got {temperature!r}")
        q, qids = self._query(query, query_ids)
        q = q / temperature  # once per query, not once per logit
        B = q.shape[0]
        M = torch.full((B,), float("-inf"), dtype=q.dtype, device=q.device)
        Z = torch.zeros(B, dtype=q.dtype, device=q.device)
        W = torch.zeros(B, self.dim, dtype=q.dtype, device=q.device)
        keys, ids = self._valid(), self.ids[: self._count]
        for start in range(0, keys.shape[0], chunk):  # online log-sum-exp over chunks
            k = keys[start:start + chunk].to(q.dtype)
            logits = q @ k.T
            own = own_mask(qids, ids[start:start + chunk])
            if own is not None:
                logits.masked_fill_(own, float("-inf"))
            new_M = torch.maximum(M, logits.amax(dim=1))
            safe = torch.where(torch.isinf(new_M), 0.0, new_M)  # a row with no key yet: -inf
            scale = torch.exp(M - safe)  # exp(-inf) = 0 on the first chunk
            e = logits.sub_(safe[:, None]).exp_()  # in place: no new [B, chunk]; 0 where skipped
            Z = Z * scale + e.sum(dim=1)
            W = torch.addmm(W * scale[:, None], e, k)
            M = new_M
        return M.to(query.device), Z.to(query.device), W.to(query.device)

    @torch.no_grad()
    def topk(self, query: torch.Tensor, k: int, query_ids=None, chunk: int = CHUNK):
        """The min(k, count) keys with the largest raw dot product q.k (not cosine: the keys are
        unit vectors in practice, and the queries are the caller's), sorted descending:
        (sims [B, k'], keys [B, k', D] float32), on the query's device. With query_ids [B], the
        keys of row b's own id are excluded: they rank last with sim -inf (own_id.merge_topk
        never selects them)."""
        _check(isinstance(k, int) and k >= 1, f"k must be an int >= 1, got {k!r}")
        q, qids = self._query(query, query_ids)
        keys, ids = self._valid(), self.ids[: self._count]
        kk = min(k, keys.shape[0])
        sims = torch.empty(q.shape[0], 0, dtype=q.dtype, device=q.device)
        idx = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
        for start in range(0, keys.shape[0], chunk):
            s = q @ keys[start:start + chunk].to(q.dtype).T
            own = own_mask(qids, ids[start:start + chunk])
            if own is not None:
                s.masked_fill_(own, float("-inf"))
            top = s.topk(min(kk, s.shape[1]), dim=1)
            sims = torch.cat([sims, top.values], 1)
            sims, pos = sims.topk(min(kk, sims.shape[1]), dim=1)
            idx = torch.cat([idx, top.indices + start], 1).gather(1, pos)
        return sims.to(query.device), keys[idx].float().to(query.device)

    def sample(self, n: int, generator: torch.Generator | None = None, with_ids: bool = False):
        """n keys drawn uniformly with replacement, float32 [n, D] ([0, D] from an empty shard);
        with_ids: (keys, their image ids [n] long, on the CPU)."""
        _check(isinstance(n, int) and n >= 0, f"n must be an int >= 0, got {n!r}")
        if self._count == 0:
            keys, ids = torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.long)
        else:
            rows = torch.randint(self._count, (n,), generator=generator).to(self.device)
            keys, ids = self._valid()[rows].float(), self.ids[rows].cpu()
        return (keys, ids) if with_ids else keys

    def contents(self, with_ids: bool = False):
        """Valid keys, float32 [count, D]: queue oldest first; instance row i is id first_id + i.
        with_ids: (keys, their image ids [count] long)."""
        keys, ids = self._valid().float(), self.ids[: self._count]
        if self.mode == "queue" and self._count == self.capacity:
            keys, ids = keys.roll(-self.ptr, dims=0), ids.roll(-self.ptr, dims=0)
        return (keys, ids.clone()) if with_ids else keys

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "dim": self.dim, "mode": self.mode,
                "first_id": self.first_id, "ptr": self.ptr, "count": self._count,
                "buffer": self.buffer.detach().cpu().clone(), "ids": self.ids.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restores exactly; a buffer saved in another storage dtype is cast to this one. A queue
        state without "ids" (saved before keys carried ids) loads with every id unknown (-1)."""
        for key in ("capacity", "dim", "mode", "first_id"):
            _check(state.get(key) == getattr(self, key), f"state {key}={state.get(key)!r} "
                   f"does not match this shard's {getattr(self, key)!r}")
        buf = state["buffer"]
        _check(tuple(buf.shape) == (self.capacity, self.dim),
               f"state buffer must be [{self.capacity}, {self.dim}], got {list(buf.shape)}")
        self.buffer = buf.to(self.device, self.dtype).clone()
        self.ids = self._initial_ids()
        if self.mode == "queue" and state.get("ids") is not None:
            _check(tuple(state["ids"].shape) == (self.capacity,),
                   f"state ids must be [{self.capacity}], got {list(state['ids'].shape)}")
            self.ids = state["ids"].to(self.device, torch.long).clone()
        self.ptr, self._count = int(state["ptr"]), int(state["count"])
