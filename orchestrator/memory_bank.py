"""The shared, sharded memory bank of negatives: one logical bank for all the workers of a trial,
its keys spread over Ray actors (`orchestrator.bank_shard_actor`, one `workloads.bank.BankShard`
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

import math
import time
import uuid
from collections import deque

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from workloads.bank import exact_info_nce, merge_partials, merge_topk
from workloads.bank.own_id import check_ids

try:  # newer Ray
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STATE_FORMAT = "sslab.memory_bank/1"


class BankError(RuntimeError):
    """A shard failed a request (the message says which and why)."""


class BankTimeoutError(TimeoutError):
    """A query waited longer than the bank's `timeout` (for other ranks' pushes, or a refill)."""


def _bad(name: str, value, valid: str) -> ValueError:
    return ValueError(f"ShardedMemoryBank: {name}={value!r} is not valid; {name} must be {valid}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dtype_name(dtype) -> str:
    for name, value in DTYPES.items():
        if dtype == name or dtype == value:
            return name
    raise _bad("dtype", dtype, f"one of {list(DTYPES)} (or the torch dtypes)")


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    return 0


class PendingQuery:
    """A request the shards are working on; result() waits for it (once) and merges the replies."""

    def __init__(self, bank: "ShardedMemoryBank", method: str, step, extra_for, finish, sent_bytes: int):
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
            received = sum(_nbytes(r["result"]) for r in replies)
            self._bank._record_query(self._seconds + time.perf_counter() - start, self._sent + received)
            self._done, self._refs = True, None
        return self._value


class PendingInfoNCE(PendingQuery):
    """`bank.request_info_nce(query, temperature)`: partials on their way; loss(positive) merges them
    into the exact InfoNCE, differentiable w.r.t. query and positive (the query given here)."""

    def __init__(self, bank, query: torch.Tensor, temperature: float, step, query_ids=None):
        self.query, self.temperature = query, float(temperature)
        q = query.detach().to("cpu", torch.promote_types(query.dtype, torch.float32)).clone()
        ref = ray.put(q)
        super().__init__(bank, "partial_lse", step, lambda s: (ref, self.temperature, query_ids),
                         lambda replies: merge_partials([r["result"] for r in replies]),
                         _nbytes(q) * bank.num_shards)

    def partials(self):
        """The merged (max [B], sum_exp [B], weighted_keys [B, D]) over the whole bank."""
        return self.result()

    def loss(self, positive: torch.Tensor) -> torch.Tensor:
        M, Z, W = self.partials()
        device = self.query.device
        return exact_info_nce(self.query, positive, (M.to(device), Z.to(device), W.to(device)),
                              self.temperature)


class ShardedMemoryBank:
    """See the module docstring. Arguments are checked (ValueError naming the argument and what is
    valid) before any actor starts."""

    def __init__(self, size: int, dim: int, num_shards: int = 1, mode: str = "queue",
                 momentum: float = 0.5, dtype="float32", world_size: int = 1, seed: int = 0,
                 snapshot_every: int = 100, timeout: float = 60.0, num_cpus: float = 0.0,
                 max_restarts: int = -1, max_task_retries: int = -1, placement_strategy: str = "SPREAD"):
        if not (_is_int(size) and size >= 1):
            raise _bad("size", size, "an int >= 1 (queue: K keys; instance: N sample ids)")
        if not (_is_int(dim) and dim >= 1):
            raise _bad("dim", dim, "an int >= 1 (the key dimension)")
        if not (_is_int(num_shards) and 1 <= num_shards <= size):
            raise _bad("num_shards", num_shards, f"an int in [1, size={size}]")
        if mode not in ("queue", "instance"):
            raise _bad("mode", mode, "'queue' (MoCo: the last size keys) or 'instance' (InstDisc: one entry per id)")
        if mode == "queue" and size % num_shards:
            raise _bad("num_shards", num_shards, f"a divisor of size={size} in mode='queue'")
        S = num_shards
        c = size // S if mode == "queue" else math.ceil(size / S)
        if (S - 1) * c >= size:
            raise _bad("num_shards", num_shards, f"such that every shard holds ids in mode='instance' "
                       f"((num_shards - 1) * ceil(size / num_shards) < size={size})")
        if not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and 0 <= momentum < 1):
            raise _bad("momentum", momentum, "a number in [0, 1)")
        dtype_name = _dtype_name(dtype)
        if not (_is_int(world_size) and world_size >= 1):
            raise _bad("world_size", world_size, "an int >= 1 (the number of ranks that push each step)")
        if not _is_int(seed):
            raise _bad("seed", seed, "an int")
        if not (_is_int(snapshot_every) and snapshot_every >= 0):
            raise _bad("snapshot_every", snapshot_every, "an int >= 0 (pushes between snapshots; 0: only on state_dict())")
        if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
            raise _bad("timeout", timeout, "a number of seconds > 0")
        if not (isinstance(num_cpus, (int, float)) and not isinstance(num_cpus, bool) and num_cpus >= 0):
            raise _bad("num_cpus", num_cpus, "a number >= 0 (CPUs reserved per shard; fractions are fine)")
        for name, value in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries)):
            if not (_is_int(value) and value >= -1):
                raise _bad(name, value, "an int >= -1 (-1: unlimited)")
        if placement_strategy not in ("SPREAD", "STRICT_SPREAD", "PACK", "STRICT_PACK"):
            raise _bad("placement_strategy", placement_strategy, "'SPREAD', 'STRICT_SPREAD', 'PACK' or 'STRICT_PACK'")

        self.size, self.dim, self.num_shards, self.mode = size, dim, S, mode
        self.momentum, self.dtype, self.world_size, self.seed = float(momentum), dtype_name, world_size, seed
        self.snapshot_every, self.timeout, self.num_cpus = snapshot_every, float(timeout), float(num_cpus)
        self.shard_capacity = c
        self.capacities = [min(c, size - s * c) for s in range(S)]

        from orchestrator.bank_shard_actor import ShardServer
        from orchestrator.ray_runtime import ensure_ray

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

    # ---- messages ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BankError("ShardedMemoryBank: this bank was closed")

    def _send(self, s: int, method: str, *args):
        ref = getattr(self._actors[s], method).remote(self._copy_id, self._seq[s], self._inc[s], *args)
        self._seq[s] += 1  # only once sent: the shard waits for every sequence number in turn
        return ref

    def _note(self, s: int, reply: dict) -> None:
        """Track a reply: a new incarnation is a restart (count it, refill or replay)."""
        self._counts[s] = reply["count"]
        changed = reply["inc"] != self._inc[s]
        if changed:
            self._inc[s] = reply["inc"]
            self.shard_restarts += 1
        if reply["needs_refill"] and self._can_refill:
            if self._refilled[s] != reply["inc"]:  # older replies of the same incarnation say so too
                self._refilled[s] = reply["inc"]
                self._refill(s)
        elif changed and self._log[s]:
            self._inflight.append((s, self._send(s, "replay", list(self._log[s]), self.timeout)))

    def _refill(self, s: int) -> None:
        candidates = [state for _, state in self._snapshots[s]]
        ref = self._send(s, "restore", candidates, list(self._log[s]), False, self.timeout)
        reply = ray.get(ref, timeout=2 * self.timeout + 30)
        self._counts[s] = reply["count"]

    def _check_pushes(self, block: bool = False) -> None:
        """Look at the replies of finished pushes (restarts show up there too); with block, wait
        for all of them. Lost pushes (the actor died) are not errors: replays cover them."""
        while self._inflight:
            refs = [ref for _, ref in self._inflight]
            if block:
                ready = set(refs)
                ray.wait(refs, num_returns=len(refs), timeout=2 * self.timeout + 30)
            else:
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                ready = set(done)
            if len(self._inflight) - len(ready) > 8 * self.num_shards:  # back-pressure
                ray.wait(refs[: len(refs) // 2], num_returns=len(refs) // 2, timeout=2 * self.timeout + 30)
                continue
            finished = [(s, ref) for s, ref in self._inflight if ref in ready]
            self._inflight = [(s, ref) for s, ref in self._inflight if ref not in ready]
            for s, ref in finished:
                try:
                    reply = ray.get(ref, timeout=2 * self.timeout + 30)
                except (RayActorError, ActorUnavailableError):
                    continue
                self._note(s, reply)
            if not block or not self._inflight:
                return

    def _submit(self, method: str, step, extra_for) -> dict:
        self._check_open()
        self._check_pushes()
        return {s: self._send(s, method, step, self._can_refill, self.timeout, *extra_for(s))
                for s in range(self.num_shards)}

    def _finish(self, refs: dict, method: str, step, extra_for) -> list[dict]:
        deadline = time.monotonic() + 2 * self.timeout + 30
        refs, replies = dict(refs), {}
        while refs:
            s = next(iter(refs))
            ref = refs.pop(s)
            try:
                reply = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except GetTimeoutError as error:
                raise BankTimeoutError(f"memory bank shard {s} did not answer {method} within "
                                       f"{2 * self.timeout + 30:.0f} s") from error
            except (RayActorError, ActorUnavailableError) as error:
                if time.monotonic() > deadline:
                    raise BankTimeoutError(f"memory bank shard {s} stayed unavailable: {error}") from error
                time.sleep(0.2)
                refs[s] = self._send(s, method, step, self._can_refill, self.timeout, *extra_for(s))
                continue
            self._note(s, reply)
            status = reply["status"]
            if status == "ok":
                replies[s] = reply
            elif status in ("restarted", "refill"):
                if time.monotonic() > deadline:
                    raise BankTimeoutError(f"memory bank shard {s} was not refilled in time")
                refs[s] = self._send(s, method, step, self._can_refill, self.timeout, *extra_for(s))
            elif status == "timeout":
                raise BankTimeoutError(reply["error"])
            else:
                raise BankError(f"memory bank shard {s}, {method}: {reply['error']}")
        return [replies[s] for s in range(self.num_shards)]

    def _record_query(self, seconds: float, nbytes: int) -> None:
        self._window["query_seconds"] += seconds
        self._window["queries"] += 1
        self._window["bytes"] += nbytes

    def _query_step(self, step):
        if step is None:
            return self._next_step
        if not (_is_int(step) and step >= 0):
            raise _bad("step", step, "None or an int >= 0 (the global training step of the query)")
        return step

    def _check_query(self, query, name: str = "query", query_ids=None):
        """None, or query_ids as a CPU long tensor [B] (ValueError when they do not fit)."""
        if not (isinstance(query, torch.Tensor) and query.is_floating_point() and query.ndim == 2
                and query.shape[0] >= 1 and query.shape[1] == self.dim):
            raise _bad(name, list(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__,
                       f"a floating tensor [B, {self.dim}] with B >= 1")
        if query_ids is not None:
            return check_ids(query_ids, query.shape[0], "ShardedMemoryBank: query_ids").cpu()
        return None

    # ---- the bank ---------------------------------------------------------------------------

    def push(self, keys: torch.Tensor, ids=None, step: int | None = None, rank: int = 0) -> None:
        """Queue: append keys [B, D] with their image ids [B] (None: -1, unknown). Instance: ids
        [B] (sample ids in [0, size)) are required.
        Fire and forget; idempotent by (step, rank) when step is given (see the module docstring)."""
        self._check_open()
        start = time.perf_counter()
        if not (isinstance(keys, torch.Tensor) and keys.is_floating_point() and keys.ndim == 2
                and keys.shape[1] == self.dim):
            raise _bad("keys", list(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__,
                       f"a floating tensor [B, {self.dim}]")
        keys = keys.detach().to("cpu")
        if not bool(torch.isfinite(keys).all()):
            raise _bad("keys", "(contains NaN or inf)", "finite")
        n = keys.shape[0]
        if step is not None and not (_is_int(step) and step >= 0):
            raise _bad("step", step, "None or an int >= 0 (a global step that only grows over a run)")
        if not (_is_int(rank) and 0 <= rank < self.world_size):
            raise _bad("rank", rank, f"an int in [0, world_size={self.world_size})")
        if step is None and self.world_size > 1:
            raise _bad("step", step, f"an int >= 0 when world_size={self.world_size} > 1 (several pushers "
                       f"need push(keys, step=t, rank=r) for exact routing, exactly-once and staleness)")
        if self._stepped is not None and self._stepped != (step is not None):
            raise _bad("step", step, "given on every push of a bank or on none (the queue routing "
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
                raise _bad("ids", None, f"an integer tensor [{n}] of sample ids in [0, {self.size}) in mode='instance'")
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
            self._inflight.append((s, self._send(s, "push", step, rank, rows, part_ids, self.timeout)))
            if self._log[s].maxlen:
                self._log[s].append((step, rank, self._copy_id, seq, rows, part_ids))
            nbytes += _nbytes(rows) + _nbytes(part_ids)
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
            raise _bad("temperature", temperature, "a number > 0")
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
        if not (_is_int(k) and k >= 1):
            raise _bad("k", k, "an int >= 1")
        q = query.detach().to("cpu", torch.promote_types(query.dtype, torch.float32)).clone()
        ref, device = ray.put(q), query.device

        def finish(replies):
            return merge_topk([r["result"] for r in replies], k, self.dim).to(device)

        return PendingQuery(self, "topk", self._query_step(step), lambda s: (ref, k, query_ids), finish,
                            _nbytes(q) * self.num_shards)

    def hardest(self, query: torch.Tensor, k: int, step: int | None = None, query_ids=None) -> torch.Tensor:
        """[B, k', D] float32: per query the keys with the largest dot product, most similar first,
        selected on the shards, none of the query's own id; k' = min(k, the fewest such keys)."""
        return self.request_hardest(query, k, step, query_ids).result()

    def request_sample(self, n: int, step: int | None = None, with_ids: bool = False) -> PendingQuery:
        if not (_is_int(n) and n >= 0):
            raise _bad("n", n, "an int >= 0")

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

    def _send_snapshot(self, s: int, step: int | None = None):
        refs = self._actors[s].snapshot.options(num_returns=2).remote(
            self._copy_id, self._seq[s], self._inc[s], step, True, self.timeout)
        self._seq[s] += 1
        return refs

    def snapshot(self) -> None:
        """Take a snapshot of every shard now (non-blocking). A copy keeps its newest snapshot
        known to be valid and the newer ones still unconfirmed (a shard answers a snapshot request
        with no state while it waits for a refill)."""
        self._check_open()
        for s in range(self.num_shards):
            kept = []
            for meta, state in self._snapshots[s]:  # newest first
                kept.append((meta, state))
                if meta is None:
                    break  # confirmed
                done, _ = ray.wait([meta], timeout=0)
                if done:
                    try:
                        ok = ray.get(meta)["status"] == "ok"
                    except Exception:  # noqa: BLE001 - lost with the actor
                        ok = False
                    if ok:
                        kept[-1] = (None, state)
                        break
                    kept.pop()
            self._snapshots[s] = [tuple(self._send_snapshot(s))] + kept

    def state_dict(self, step: int | None = None) -> dict:
        """Every shard's state (for trial checkpoints); also becomes this copy's snapshot. Like a
        query, it first waits for every rank's pushes of step - 1 (by default the step after this
        copy's last push), so that a checkpoint taken after the last step of an epoch holds that
        step from every rank, and a run resumed from it finds them."""
        self._check_open()
        self._check_pushes()
        step = self._query_step(step)
        states = {}
        deadline = time.monotonic() + 2 * self.timeout + 30
        sent = {s: self._send_snapshot(s, step) for s in range(self.num_shards)}
        while sent:
            s = next(iter(sent))
            meta, state = sent.pop(s)
            try:
                reply = ray.get(meta, timeout=max(0.1, deadline - time.monotonic()))
            except (RayActorError, ActorUnavailableError):
                reply = None
            except GetTimeoutError as error:
                raise BankTimeoutError(f"memory bank shard {s} did not answer a snapshot in time") from error
            if reply is not None:
                self._note(s, reply)
                if reply["status"] == "timeout":
                    raise BankTimeoutError(reply["error"])
            if reply is None or reply["status"] != "ok":
                if time.monotonic() > deadline:
                    raise BankTimeoutError(f"memory bank shard {s} could not be snapshotted")
                time.sleep(0.1)
                sent[s] = self._send_snapshot(s, step)
                continue
            states[s] = ray.get(state)
            self._snapshots[s] = [(None, state)]
        return {"format": STATE_FORMAT, "size": self.size, "dim": self.dim, "mode": self.mode,
                "num_shards": self.num_shards, "dtype": self.dtype, "momentum": self.momentum,
                "counter": self._counter, "next_step": self._next_step, "stepped": self._stepped,
                "shards": [states[s] for s in range(self.num_shards)]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() (of this bank, or of one with the same size, dim, mode, num_shards)."""
        self._check_open()
        if not (isinstance(state, dict) and state.get("format") == STATE_FORMAT):
            raise _bad("state", type(state).__name__, f"a dict from ShardedMemoryBank.state_dict() (format {STATE_FORMAT})")
        for key in ("size", "dim", "mode", "num_shards"):
            if state.get(key) != getattr(self, key):
                raise _bad(f"state[{key!r}]", state.get(key), f"{getattr(self, key)!r}, as in this bank "
                           f"(re-sharding a saved bank is not supported)")
        self._check_pushes(block=True)
        self._restore_all(list(state["shards"]))
        self._counter, self._next_step, self._stepped = state["counter"], state["next_step"], state["stepped"]

    def reset(self) -> None:
        """Empty the bank (every shard back to its initial content, records cleared)."""
        self._check_open()
        self._check_pushes(block=True)
        self._restore_all([None] * self.num_shards)
        self._counter, self._next_step, self._stepped = 0, None, None

    def _restore_all(self, envelopes: list) -> None:
        refs = [ray.put(e) if e is not None else None for e in envelopes]
        pending = [self._send(s, "restore", [refs[s]] if refs[s] is not None else [], [], True, self.timeout)
                   for s in range(self.num_shards)]
        for s, reply in enumerate(ray.get(pending, timeout=2 * self.timeout + 30)):
            self._counts[s] = reply["count"]
            self._inc[s] = reply["inc"]
        for s in range(self.num_shards):
            self._snapshots[s] = [(None, refs[s])] if refs[s] is not None else []
            self._log[s].clear()
        self._pushes = 0

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
