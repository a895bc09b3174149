"""The shared, sharded memory bank of negatives: one logical bank for all the workers of a trial,
its keys spread over Ray actors (`orchestrator.memory_bank.shard_actor`, one `workloads.bank.BankShard`
each), the math done where the keys live.

    bank = ShardedMemoryBank(size=65536, dim=128, num_shards=2, mode="queue", world_size=W)
    # hand `bank` to the W workers (it pickles: actor handles travel with it); on worker r:
    for t in steps:
        pending = bank.request_info_nce(q, temperature)   # the shards start on the partials now,
        k = key_encoder(x2)                               # while this worker runs the key encoder
        loss = pending.loss(k)                            # exact InfoNCE over the whole bank
        loss.backward(); bank.push(k, step=t, rank=r)     # fire and forget

What moves per step is O(B * D * S), independent of the bank size K: the query goes to every
shard, and back come per-query partial log-sum-exp statistics (`info_nce`), the top k keys
(`hardest`) or n draws (`sample`); the client merges them (`workloads.bank.exact_info_nce`).

Semantics (tests/test_memory_bank.py checks each):

- Modes. `queue` (MoCo, XBM): the last `size` keys pushed by all workers, first in first out;
  `size` must be divisible by `num_shards`. `instance` (InstDisc): one entry per sample id in
  [0, size), v <- normalize(m v + (1 - m) f); shard s holds ids [s c, (s + 1) c), c = ceil(size / S).
  Keys are stored in `dtype` (float32, float16 or bfloat16); the math runs in float32.
- Own image. Every key is stored with its image id (push(keys, ids): queue ids travel with their
  keys, None stores -1 = unknown; instance: the entry's id). Queries given `query_ids` exclude each
  row's own id's keys on the shards (workloads.bank.own_id): info_nce stays exact over the rest,
  hardest never returns them; sample(n, with_ids=True) returns the draws' ids for the caller.
- Routing of queue rows (exact with several pushers). Row j of the push (step, rank) of n rows has
  stream position g = (step * world_size + rank) * n + j, and goes to shard g % S; each shard keeps
  the last size / S of its rows. A single pusher without steps uses a row counter instead,
  g = rows pushed before + j (as LocalBank). When every push of every rank has the same n (full
  batches), the stream positions are consecutive and the bank holds exactly the last `size` keys
  in (step, rank, row) order, whatever the order in which the pushes arrive.
- Exactly once. push(keys, step=t, rank=r) is idempotent by (t, r) on every shard, so a push that
  Ray retries, or that a copy replays after a restart, or that the caller repeats, lands once.
  Without a step (one pusher only: world_size must be 1), every push is applied once (retries are
  recognised by the copy's sequence number).
- Staleness bound. The bank used by a query at step t holds every rank's pushes of steps <= t - 1
  and none of steps >= t: each shard holds a push back until a query of a later step, and a query
  at step t waits (up to `timeout` s, then BankTimeoutError naming the missing ranks) until all
  `world_size` ranks pushed step t - 1. The step of a query is `step=` if given, else one more than
  the last step this copy pushed (so `push(k, step=t)` then a query means step t + 1), else none (no
  wait: the query sees whatever has arrived, this copy's own pushes included).
- Overlap. Pushes are fire and forget (ordered per shard and per copy). `request_info_nce`,
  `request_hardest` and `request_sample` start the shards' work and return at once; the result is
  fetched when asked for (`pending.loss(positive)`, `pending.result()`).
- Placement. The shards sit in one placement group, strategy SPREAD (one bundle per shard), so on
  several nodes they spread across them. A bundle cannot be all zeros (Ray refuses
  {"CPU": 0}), so each bundle reserves the shard's storage as Ray's `memory` resource plus
  `num_cpus` CPUs (default 0: a shard is mostly idle, and a trial may use every CPU of the node
  for its workers). Give `num_cpus` > 0 to reserve CPU for the shards.
- Faults. Shard actors run with `max_restarts` / `max_task_retries` (default -1: always). The copy
  that creates the bank, and a copy that pushes as rank 0, take a snapshot of every shard every
  `snapshot_every` of their pushes (and on state_dict()), kept in Ray's object store (owned by that
  copy's process). Every copy keeps its last `snapshot_every + 2` pushes per shard. A restarted
  actor comes back empty with a new incarnation id; the first copy that hears from it refills it
  from the newest snapshot (if it holds snapshots) and every copy replays its recent pushes, so the
  shard ends up with the snapshot, plus the replayed pushes, plus the later ones (with
  snapshot_every=0: the last snapshot taken by state_dict()/snapshot() plus the later pushes).
  Each copy counts the restarts it saw in `shard_restarts` / `metrics()["bank/shard_restarts"]`.
  The snapshots live on the shard's node: losing the node loses them (the bank then restarts empty).
- Checkpoints. state_dict() gathers every shard (held pushes and exactly-once records included);
  load_state_dict() restores it into this bank, or into a fresh one with the same size, dim, mode
  and num_shards.
- Copies. Pickling the bank (e.g. into Ray Train workers) gives a copy that talks to the same
  actors. Only the creating copy's close() kills the actors; a copy's close() only detaches it.
  A copy is used by one thread at a time (give each thread its own copy: pickle.loads(pickle.dumps(bank))).
"""

from __future__ import annotations

import time
import uuid
from collections import deque

import ray
import torch
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.memory_bank.checkpoint import BankCheckpoint
from orchestrator.memory_bank.checks import (
    DTYPES,
    BankError,
    bad,
    check_arguments,
    is_int,
    tensor_bytes,
)
from orchestrator.memory_bank.pending import PendingInfoNCE, PendingQuery
from orchestrator.memory_bank.shard_actor import ShardServer
from orchestrator.memory_bank.wire import from_wire, to_wire
from orchestrator.ray_runtime import ensure_ray
from workloads.bank import merge_topk
from workloads.bank.own_id import check_ids


class ShardedMemoryBank(BankCheckpoint):
    """See the module docstring. Arguments are checked (ValueError naming the argument and what is
    valid) before any actor starts."""

    def __init__(self, size: int, dim: int, num_shards: int = 1, mode: str = "queue",
                 momentum: float = 0.5, dtype="float32", world_size: int = 1, seed: int = 0,
                 snapshot_every: int = 100, timeout: float = 60.0, num_cpus: float = 0.0,
                 max_restarts: int = -1, max_task_retries: int = -1, placement_strategy: str = "SPREAD"):
        S, c, dtype_name = check_arguments(size, dim, num_shards, mode, momentum, dtype, world_size, seed,
                                           snapshot_every, timeout, num_cpus, max_restarts, max_task_retries,
                                           placement_strategy)
        self.size, self.dim, self.num_shards, self.mode = size, dim, S, mode
        self.momentum, self.dtype, self.world_size, self.seed = float(momentum), dtype_name, world_size, seed
        self.snapshot_every, self.timeout, self.num_cpus = snapshot_every, float(timeout), float(num_cpus)
        self.shard_capacity = c
        self.capacities = [min(c, size - s * c) for s in range(S)]

        ensure_ray()
        itemsize = torch.empty(0, dtype=DTYPES[dtype_name]).element_size()
        bundle = {"memory": max(1 << 20, c * (dim * itemsize + 8))}  # keys and their int64 ids
        if num_cpus > 0:
            bundle["CPU"] = float(num_cpus)
        self.bundle = bundle
        self._pg = placement_group([dict(bundle) for _ in range(S)], strategy=placement_strategy)
        try:
            ray.get(self._pg.ready(), timeout=max(self.timeout, 60.0))
        except GetTimeoutError as error:
            remove_placement_group(self._pg)
            raise BankError(f"ShardedMemoryBank: could not place {S} shard bundles {bundle} (strategy "
                            f"{placement_strategy}) within {max(self.timeout, 60.0)} s: the cluster lacks "
                            f"the resources (lower num_cpus, or add nodes)") from error
        actor_cls = ray.remote(ShardServer)
        self._actors = [
            actor_cls.options(
                num_cpus=self.num_cpus, max_restarts=max_restarts, max_task_retries=max_task_retries,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=self._pg,
                                                                     placement_group_bundle_index=s),
            ).remote(s, self.capacities[s], dim, mode, self.momentum, dtype_name, s * c, seed, world_size)
            for s in range(S)
        ]
        hellos = ray.get([a.hello.remote() for a in self._actors], timeout=max(self.timeout, 120.0))
        self._inc = [h["inc"] for h in hellos]
        self.shard_nodes = [h["result"]["node_id"] for h in hellos]
        self._counts = [h["count"] for h in hellos]
        self._counter = 0  # rows pushed without a step (queue routing of a single pusher)
        self._next_step: int | None = None
        self._stepped: bool | None = None
        self._creator = True
        self._init_copy()

    # ---- copies -----------------------------------------------------------------------------

    def _init_copy(self) -> None:
        self._copy_id = uuid.uuid4().hex
        self._seq = [0] * self.num_shards
        self._inflight: list[tuple[int, ray.ObjectRef]] = []
        window = self.snapshot_every + 2 if self.snapshot_every else 0
        self._log = [deque(maxlen=window) for _ in range(self.num_shards)]
        # per shard, newest first: (reply ref or None once known valid, state ref)
        self._snapshots: list[list] = [[] for _ in range(self.num_shards)]
        self._can_refill = self._creator
        self._refilled: list[str | None] = [None] * self.num_shards
        self._pushes = 0
        self._closed = False
        self.shard_restarts = 0
        self._window = {"push_seconds": 0.0, "pushes": 0, "query_seconds": 0.0, "queries": 0, "bytes": 0}
        self._generator = torch.Generator().manual_seed(
            self.seed if self._creator else int(self._copy_id[:12], 16))

    _SHARED = ("size", "dim", "num_shards", "mode", "momentum", "dtype", "world_size", "seed",
               "snapshot_every", "timeout", "num_cpus", "shard_capacity", "capacities", "bundle",
               "_pg", "_actors", "_inc", "shard_nodes", "_counts", "_counter", "_next_step", "_stepped")

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self._SHARED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._creator = False
        self._init_copy()

    # ---- the bank ---------------------------------------------------------------------------

    def push(self, keys: torch.Tensor, ids=None, step: int | None = None, rank: int = 0) -> None:
        """Queue: append keys [B, D] with their image ids [B] (None: -1, unknown). Instance: ids
        [B] (sample ids in [0, size)) are required.
        Fire and forget; idempotent by (step, rank) when step is given (see the module docstring)."""
        self._check_open()
        start = time.perf_counter()
        if not (isinstance(keys, torch.Tensor) and keys.is_floating_point() and keys.ndim == 2
                and keys.shape[1] == self.dim):
            raise bad("keys", list(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__,
                       f"a floating tensor [B, {self.dim}]")
        keys = keys.detach().to("cpu")
        if not bool(torch.isfinite(keys).all()):
            raise bad("keys", "(contains NaN or inf)", "finite")
        n = keys.shape[0]
        if step is not None and not (is_int(step) and step >= 0):
            raise bad("step", step, "None or an int >= 0 (a global step that only grows over a run)")
        if not (is_int(rank) and 0 <= rank < self.world_size):
            raise bad("rank", rank, f"an int in [0, world_size={self.world_size})")
        if step is None and self.world_size > 1:
            raise bad("step", step, f"an int >= 0 when world_size={self.world_size} > 1 (several pushers "
                       f"need push(keys, step=t, rank=r) for exact routing, exactly-once and staleness)")
        if self._stepped is not None and self._stepped != (step is not None):
            raise bad("step", step, "given on every push of a bank or on none (the queue routing "
                       "differs between the two)")
        S = self.num_shards
        if self.mode == "queue":
            if ids is not None:
                ids = check_ids(torch.as_tensor(ids).detach().cpu(), n, "ShardedMemoryBank: push")
            base = (step * self.world_size + rank) * n if step is not None else self._counter
            dtype = DTYPES[self.dtype]
            parts = [(keys[(s - base) % S::S].to(dtype).clone(memory_format=torch.contiguous_format),
                      None if ids is None else ids[(s - base) % S::S].clone()) for s in range(S)]
        else:
            if ids is None:
                raise bad("ids", None, f"an integer tensor [{n}] of sample ids in [0, {self.size}) in mode='instance'")
            ids = check_ids(torch.as_tensor(ids).detach().cpu(), n, "ShardedMemoryBank: push", 0, self.size)
            owner = ids // self.shard_capacity
            parts = [(keys[owner == s].float().contiguous(), ids[owner == s].clone()) for s in range(S)]
        self._stepped = step is not None
        if step is None:
            self._counter += n
        else:
            self._next_step = step + 1 if self._next_step is None else max(self._next_step, step + 1)
        if rank == 0:
            self._can_refill = True
        self._check_pushes()
        nbytes = 0
        for s, (rows, part_ids) in enumerate(parts):
            seq = self._seq[s]
            self._inflight.append((s, self._send(s, "push", step, rank, to_wire(rows), to_wire(part_ids),
                                                       self.timeout)))
            if self._log[s].maxlen:
                self._log[s].append((step, rank, self._copy_id, seq, rows, part_ids))
            nbytes += tensor_bytes(rows) + tensor_bytes(part_ids)
        self._pushes += 1
        if self._can_refill and self.snapshot_every and self._pushes % self.snapshot_every == 0:
            self.snapshot()
        self._window["push_seconds"] += time.perf_counter() - start
        self._window["pushes"] += 1
        self._window["bytes"] += nbytes

    def request_info_nce(self, query: torch.Tensor, temperature: float, step: int | None = None,
                         query_ids=None) -> PendingInfoNCE:
        """Start the exact InfoNCE now; `.loss(positive)` later (the overlap API)."""
        query_ids = self._check_query(query, query_ids=query_ids)
        if isinstance(temperature, torch.Tensor) or isinstance(temperature, bool) \
                or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise bad("temperature", temperature, "a number > 0")
        return PendingInfoNCE(self, query, temperature, self._query_step(step), query_ids)

    def info_nce(self, query: torch.Tensor, positive: torch.Tensor, temperature: float,
                 step: int | None = None, query_ids=None) -> torch.Tensor:
        """Exactly info_nce_loss(query, positive, negatives, temperature), row b's negatives being
        the keys not of id query_ids[b] (all keys without query_ids); differentiable w.r.t. query
        and positive."""
        self._check_query(positive, "positive")
        return self.request_info_nce(query, temperature, step, query_ids).loss(positive)

    def request_hardest(self, query: torch.Tensor, k: int, step: int | None = None,
                        query_ids=None) -> PendingQuery:
        query_ids = self._check_query(query, query_ids=query_ids)
        if not (is_int(k) and k >= 1):
            raise bad("k", k, "an int >= 1")
        q = query.detach().to("cpu", torch.promote_types(query.dtype, torch.float32)).clone()
        ref, device = ray.put(to_wire(q)), query.device

        def finish(replies):
            return merge_topk([from_wire(r["result"]) for r in replies], k, self.dim).to(device)

        return PendingQuery(self, "topk", self._query_step(step), lambda s: (ref, k, query_ids), finish,
                            tensor_bytes(q) * self.num_shards)

    def hardest(self, query: torch.Tensor, k: int, step: int | None = None, query_ids=None) -> torch.Tensor:
        """[B, k', D] float32: per query the keys with the largest dot product, most similar first,
        selected on the shards, none of the query's own id; k' = min(k, the fewest such keys)."""
        return self.request_hardest(query, k, step, query_ids).result()

    def request_sample(self, n: int, step: int | None = None, with_ids: bool = False) -> PendingQuery:
        if not (is_int(n) and n >= 0):
            raise bad("n", n, "an int >= 0")

        def finish(replies):
            counts = torch.tensor([r["count"] for r in replies], dtype=torch.float64)
            if n == 0 or counts.sum() == 0:
                keys, ids = torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.long)
            else:
                owner = torch.multinomial(counts, n, replacement=True, generator=self._generator)
                per_shard = torch.bincount(owner, minlength=self.num_shards).tolist()
                order = torch.randperm(n, generator=self._generator)
                keys, ids = (torch.cat([r["result"][i][:m] for r, m in zip(replies, per_shard)])[order]
                             for i in (0, 1))
            return (keys, ids) if with_ids else keys

        # every shard draws n (one round trip, O(n D S)); the client keeps m_s ~ Multinomial(counts)
        return PendingQuery(self, "sample", self._query_step(step), lambda s: (n,), finish, 0)

    def sample(self, n: int, step: int | None = None, with_ids: bool = False):
        """[n, D] float32 keys drawn uniformly with replacement from the whole bank; with_ids:
        (keys, their image ids [n])."""
        return self.request_sample(n, step, with_ids).result()

    def keys(self, step: int | None = None, with_ids: bool = False):
        """[n, D] float32, the contents (queue: order free; instance: row i is id i), as a query
        at `step` would see them (by default, after every push of this copy); with_ids: (keys,
        their image ids [n])."""
        self._check_open()
        step = self._query_step(step)
        replies = self._finish(self._submit("contents", step, lambda s: ()), "contents", step, lambda s: ())
        keys, ids = (torch.cat([r["result"][i] for r in replies]) for i in (0, 1))
        return (keys, ids) if with_ids else keys

    def flush(self) -> None:
        """Wait until every push sent by this copy has reached its shard."""
        self._check_open()
        self._check_pushes(block=True)

    def metrics(self, reset: bool = True) -> dict:
        """`bank/...` figures since the last call: size, fill (keys held / size), push_seconds and
        query_seconds (mean seconds the caller spent per push / per query), bytes_moved (tensor
        bytes sent and received per step, a step being one query and its pushes), shard_restarts."""
        w = self._window
        held = self.size if self.mode == "instance" else sum(self._counts)
        steps = max(w["queries"], 1)
        out = {"bank/size": self.size, "bank/fill": held / self.size,
               "bank/push_seconds": w["push_seconds"] / max(w["pushes"], 1),
               "bank/query_seconds": w["query_seconds"] / steps,
               "bank/bytes_moved": w["bytes"] / steps, "bank/shard_restarts": self.shard_restarts}
        if reset:
            self._window = {key: 0 for key in w}
        return out

    @property
    def actors(self) -> list:
        """The shard actors' handles (shard s is actors[s])."""
        return list(self._actors)

    def close(self) -> None:
        """The creating copy kills the shard actors and removes their placement group; a copy
        (unpickled) only detaches."""
        if self._closed:
            return
        self._closed = True
        if self._creator:
            try:  # let the pushes in flight land, so that Ray does not retry them on dead actors
                ray.wait([ref for _, ref in self._inflight], num_returns=len(self._inflight), timeout=10)
            except Exception:  # noqa: BLE001
                pass
        self._inflight = []
        if self._creator:
            for actor in self._actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            try:
                remove_placement_group(self._pg)
            except Exception:  # noqa: BLE001
                pass

    def __repr__(self) -> str:
        return (f"ShardedMemoryBank(size={self.size}, dim={self.dim}, num_shards={self.num_shards}, "
                f"mode={self.mode!r}, dtype={self.dtype!r}, world_size={self.world_size})")
