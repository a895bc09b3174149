"""One shard of the ShardedMemoryBank: an asyncio Ray actor around a `workloads.bank.BankShard`.

The actor keeps the shard's keys and runs, where they live, the math that only ever sends
O(B * D) back: partial log-sum-exp statistics (`partial_lse`), top-k (`topk`), uniform draws
(`sample`, with their image ids). Every key is stored with its image id (the pushes carry them in
both modes), and a query's `query_ids` exclude its own id's keys (`BankShard`,
workloads.bank.own_id). `orchestrator.memory_bank.ShardedMemoryBank` is the client; read its
docstring for the semantics. What this file implements, per message:

- Ordering. asyncio actors execute out of order (Ray's rule), so every message carries the sending
  bank copy's id and a per-shard sequence number, and the actor runs each copy's messages one at a
  time in sequence order (`_turn` / `_done`): a copy's push lands before its next query, and its
  query finishes before its next push. Copies do not wait for one another, except as below.
- Exactly once. A push with a step is recorded by (step, rank); a repeat is dropped (the last
  SEEN_STEPS steps are remembered, an older push is dropped as well). A push without a step is
  recorded by (copy, sequence number). Both records travel in snapshots, so a push retried by Ray
  onto a restarted actor, or replayed by a copy, is not applied twice.
- Staleness. A push with a step is held back and applied, in (step, rank) order, by the first query
  of a later step, or as soon as every rank has pushed that step (by then every rank's query of
  that step has run: a rank queries, then pushes, in order). A query at step t first waits
  (asyncio, up to `timeout` s) until every rank in range(world_size) has pushed step t - 1 (ranks
  are counted from the first step this shard saw), then applies every held push of steps <= t - 1.
  So the keys a query at step t sees are exactly the pushes of steps <= t - 1, whatever the order
  in which the ranks' pushes arrived.
- Restarts. A restarted actor comes back empty and says so (`needs_refill`), with a new random
  incarnation id in every reply; until a bank copy that holds a snapshot restores it, it logs the
  pushes it receives and answers queries with status "refill" (or waits, for copies that cannot
  refill). `restore` loads the snapshot, then applies the logged and replayed pushes.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import warnings

import torch

from orchestrator.memory_bank.wire import from_wire, to_wire
from workloads.bank import BankShard

SEEN_STEPS = 1024


class ShardServer:
    """Plain class; `orchestrator.memory_bank.client` wraps it with `ray.remote` and its options."""

    def __init__(self, index: int, capacity: int, dim: int, mode: str, momentum: float, dtype: str,
                 first_id: int, seed: int, world_size: int):
        self.index, self.world_size, self.seed = index, world_size, seed
        self.args = dict(capacity=capacity, dim=dim, mode=mode, momentum=momentum, dtype=dtype,
                         first_id=first_id, seed=seed)
        self.shard = BankShard(**self.args)
        self.incarnation = uuid.uuid4().hex
        try:
            import ray

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.needs_refill = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        except Exception:  # noqa: BLE001 - outside Ray (unit use): a first incarnation
            self.needs_refill = False
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        self._reset_protocol()
        self.log: list[tuple] = []  # pushes received while needs_refill
        self.fifo_next: dict[str, int] = {}
        self.fifo_gaps = 0
        self._cond: asyncio.Condition | None = None

    def _reset_protocol(self) -> None:
        self.held: list[tuple] = []  # (step, rank, rows, ids): stepped pushes not applied yet
        self.max_step: dict[int, int] = {}  # rank -> highest step received
        self.seen: dict[int, set[int]] = {}  # step -> ranks received
        self.origin: int | None = None  # the first step received
        self.applied_step: int | None = None  # steps <= this were applied by a query
        self.unstepped_done: dict[str, int] = {}  # copy -> last sequence number applied

    # ---- plumbing -------------------------------------------------------------------------

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def _wait(self, predicate, timeout: float) -> bool:
        if predicate():
            return True
        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(predicate), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    async def _notify(self) -> None:
        async with self.cond:
            self.cond.notify_all()

    async def _turn(self, copy: str, seq: int, timeout: float) -> None:
        """Wait for this copy's earlier messages (a lost one is given up on after `timeout`)."""
        nxt = self.fifo_next.setdefault(copy, seq)
        if seq > nxt and not await self._wait(lambda: self.fifo_next[copy] >= seq, timeout):
            self.fifo_gaps += 1

    async def _done(self, copy: str, seq: int) -> None:
        if seq >= self.fifo_next.get(copy, 0):
            self.fifo_next[copy] = seq + 1
        await self._notify()

    def _reply(self, status: str = "ok", result=None, error: str | None = None) -> dict:
        return {"status": status, "inc": self.incarnation, "index": self.index,
                "needs_refill": self.needs_refill, "count": self.shard.count, "result": result,
                "error": error}

    # ---- pushes ---------------------------------------------------------------------------

    def _apply(self, rows: torch.Tensor, ids) -> None:
        if rows.shape[0] == 0:
            return
        if self.shard.mode == "queue":
            self.shard.push(rows, ids)  # ids None (an older caller): unknown, -1
        else:
            self.shard.update(ids, rows)

    def _receive(self, step, rank, copy, seq, rows, ids) -> str:
        if step is None:
            if seq <= self.unstepped_done.get(copy, -1):
                return "duplicate"
            self.unstepped_done[copy] = seq
            self._apply(rows, ids)
            return "applied"
        if rank in self.seen.get(step, ()):
            return "duplicate"
        if len(self.seen) >= SEEN_STEPS and step < min(self.seen):
            return "duplicate"  # too old to tell whether it landed: never apply twice
        self.seen.setdefault(step, set()).add(rank)
        while len(self.seen) > SEEN_STEPS:
            del self.seen[min(self.seen)]
        self.max_step[rank] = max(self.max_step.get(rank, step), step)
        self.origin = step if self.origin is None else min(self.origin, step)
        if self.applied_step is not None and step <= self.applied_step:
            self._apply(rows, ids)  # late: a query of a later step already ran
            return "applied"
        if rows.shape[0]:
            self.held.append((step, rank, rows, ids))
        # Once every rank has pushed step s, every rank's query at step s is done (a rank queries,
        # then pushes, and its messages run in order), so the pushes of step s can be applied.
        complete = min(self.max_step.get(r, self.origin - 1) for r in range(self.world_size))
        if complete >= step:
            self._apply_through(complete)
            return "applied"
        return "held"

    def _apply_through(self, last_step: int | None) -> None:
        """Apply the held pushes of steps <= last_step (all when None), in (step, rank) order."""
        if last_step is not None:
            self.applied_step = last_step if self.applied_step is None else max(self.applied_step, last_step)
        if not self.held:
            return
        due = [h for h in self.held if last_step is None or h[0] <= last_step]
        if not due:
            return
        self.held = [h for h in self.held if not (last_step is None or h[0] <= last_step)]
        for step, rank, rows, ids in sorted(due, key=lambda h: (h[0], h[1])):
            self._apply(rows, ids)

    def _missing(self, step: int | None) -> list[int]:
        """Ranks whose push of step - 1 has not arrived (none before the first step seen)."""
        if step is None or self.origin is None or step - 1 < self.origin:
            return []
        return [r for r in range(self.world_size) if self.max_step.get(r, self.origin - 1) < step - 1]

    async def push(self, copy, seq, inc, step, rank, rows, ids, timeout):
        rows, ids = from_wire(rows), from_wire(ids)  # held, logged and snapshotted as tensors
        await self._turn(copy, seq, timeout)
        try:
            if self.needs_refill:
                self.log.append((step, rank, copy, seq, rows, ids))
                return self._reply(result="logged")
            return self._reply(result=self._receive(step, rank, copy, seq, rows, ids))
        finally:
            await self._done(copy, seq)

    async def replay(self, copy, seq, inc, entries, timeout):
        """A copy re-sends its recent pushes after it saw this actor restart; repeats are dropped."""
        await self._turn(copy, seq, timeout)
        try:
            if self.needs_refill:
                self.log.extend(entries)
                return self._reply(result="logged")
            return self._reply(result=[self._receive(*e) for e in _ordered(entries)])
        finally:
            await self._done(copy, seq)

    # ---- queries --------------------------------------------------------------------------

    async def _prologue(self, inc, step, can_refill, timeout) -> dict | None:
        """None when the query may run (after the staleness wait); else the reply to send."""
        if inc is not None and inc != self.incarnation:
            return self._reply("restarted")  # the copy replays its pushes (and refills) first
        if self.needs_refill:
            if can_refill:
                return self._reply("refill")
            if not await self._wait(lambda: not self.needs_refill, timeout):
                return self._reply("timeout", error=(
                    f"memory bank shard {self.index} was restarted and no bank copy holding a snapshot "
                    f"refilled it within {timeout} s (the creator of the bank, or the copy that pushes "
                    f"as rank 0, refills it when it next queries)"))
        if step is not None and not await self._wait(lambda: not self._missing(step), timeout):
            return self._stale(step, timeout)
        self._apply_through(None if step is None else step - 1)
        return None

    def _stale(self, step: int, timeout: float) -> dict:
        return self._reply("timeout", error=(
            f"memory bank shard {self.index}: a query at step {step} waited {timeout} s for the "
            f"pushes of step {step - 1} from ranks {self._missing(step)} (world_size={self.world_size}); "
            f"the bank used at step t holds every rank's pushes up to step t - 1, so every rank in "
            f"range(world_size) must push each step (push(keys, step=t, rank=r)), or pass a "
            f"smaller world_size"))

    async def _query(self, copy, seq, inc, step, can_refill, timeout, compute):
        await self._turn(copy, seq, timeout)
        try:
            early = await self._prologue(inc, step, can_refill, timeout)
            if early is not None:
                return early
            start = time.perf_counter()
            result = compute()
            reply = self._reply(result=result)
            reply["seconds"] = time.perf_counter() - start
            return reply
        except Exception as error:  # noqa: BLE001 - sent back with its message
            return self._reply("error", error=f"{type(error).__name__}: {error}")
        finally:
            await self._done(copy, seq)

    async def partial_lse(self, copy, seq, inc, step, can_refill, timeout, query, temperature,
                          query_ids=None):
        return await self._query(copy, seq, inc, step, can_refill, timeout, lambda: to_wire(
            self.shard.partial_lse(from_wire(query), temperature, query_ids)))

    async def topk(self, copy, seq, inc, step, can_refill, timeout, query, k, query_ids=None):
        return await self._query(copy, seq, inc, step, can_refill, timeout,
                                 lambda: to_wire(self.shard.topk(from_wire(query), k, query_ids)))

    async def sample(self, copy, seq, inc, step, can_refill, timeout, n):
        """(keys [n, D], their ids [n])."""
        return await self._query(copy, seq, inc, step, can_refill, timeout,
                                 lambda: self.shard.sample(n, self.generator, with_ids=True))

    async def contents(self, copy, seq, inc, step, can_refill, timeout):
        """(keys [count, D], their ids [count])."""
        return await self._query(copy, seq, inc, step, can_refill, timeout,
                                 lambda: self.shard.contents(with_ids=True))

    async def snapshot(self, copy, seq, inc, step, can_refill, timeout):
        """(reply, state): the shard's whole state (held pushes and exactly-once records
        included), or None when this incarnation is not refilled yet; applies nothing. With a
        step, first waits as a query at that step does (every rank's push of step - 1), so that a
        checkpoint holds whole steps. Called with num_returns=2 so that a client can check the
        small reply without fetching the state."""
        await self._turn(copy, seq, timeout)
        try:
            if inc is not None and inc != self.incarnation:
                return self._reply("restarted"), None
            if self.needs_refill:
                return self._reply("refill"), None
            if step is not None and not await self._wait(lambda: not self._missing(step), timeout):
                return self._stale(step, timeout), None
            return self._reply(), self._state()
        finally:
            await self._done(copy, seq)

    def _state(self) -> dict:
        return {"shard": self.shard.state_dict(),
                "held": [(s, r, rows.clone(), None if ids is None else ids.clone()) for s, r, rows, ids in self.held],
                "max_step": dict(self.max_step), "seen": sorted((s, r) for s, rs in self.seen.items() for r in rs),
                "origin": self.origin, "applied_step": self.applied_step,
                "unstepped_done": dict(self.unstepped_done), "generator": self.generator.get_state()}

    async def restore(self, copy, seq, inc, candidates, entries, force, timeout):
        """Refill from the newest valid snapshot in `candidates` (states from `snapshot`; none
        valid: an empty shard), then apply the logged pushes and the replayed `entries`. Without `force`,
        only a shard that needs a refill is restored (the first restore wins; a later one only
        replays its entries)."""
        await self._turn(copy, seq, timeout)
        try:
            if not (self.needs_refill or force):
                return self._reply("skipped", result=[self._receive(*e) for e in _ordered(entries)])
            state = None
            for candidate in candidates or []:  # newest first: states, or ObjectRefs of them
                if candidate is not None and not isinstance(candidate, dict):
                    try:
                        candidate = await candidate
                    except Exception:  # noqa: BLE001 - a lost snapshot: try the older one
                        continue
                if isinstance(candidate, dict):
                    state = candidate
                    break
            self.shard = BankShard(**self.args)
            self._reset_protocol()
            if state is not None:
                self.shard.load_state_dict(state["shard"])
                self.held = list(state["held"])
                self.max_step = {int(r): int(s) for r, s in state["max_step"].items()}
                for s, r in state["seen"]:
                    self.seen.setdefault(int(s), set()).add(int(r))
                self.origin, self.applied_step = state["origin"], state["applied_step"]
                self.unstepped_done = dict(state["unstepped_done"])
                self.generator.set_state(state["generator"])
            log, self.log = self.log + list(entries or []), []
            self.needs_refill = False
            outcome = [self._receive(*e) for e in _ordered(log)]
            return self._reply(result={"restored": state is not None, "replayed": outcome})
        finally:
            await self._done(copy, seq)

    async def hello(self):
        return self._reply(result={"node_id": _node_id(), "fifo_gaps": self.fifo_gaps,
                                   "held": len(self.held), "log": len(self.log),
                                   "pid": os.getpid(), "rss_bytes": _rss_bytes()})


def _ordered(entries) -> list[tuple]:
    """Stepped pushes by (step, rank), then the others by (copy, sequence number)."""
    entries = list(entries or [])
    stepped = sorted((e for e in entries if e[0] is not None), key=lambda e: (e[0], e[1]))
    other = sorted((e for e in entries if e[0] is None), key=lambda e: (e[2], e[3]))
    return stepped + other


def _rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        return None
