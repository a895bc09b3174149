"""How a bank copy talks to its shard actors: numbered messages, restarts noticed and repaired
(refill from a snapshot, replay of recent pushes), snapshots and restores. ShardedMemoryBank's base."""
from __future__ import annotations

import time

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError

from orchestrator.memory_bank.checks import BankError, BankTimeoutError, bad, is_int
from workloads.bank.own_id import check_ids

try:  # newer Ray
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError


class ShardMessages:
    """The messaging half of ShardedMemoryBank (its state is set up by ShardedMemoryBank)."""

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
        if not (is_int(step) and step >= 0):
            raise bad("step", step, "None or an int >= 0 (the global training step of the query)")
        return step

    def _check_query(self, query, name: str = "query", query_ids=None):
        """None, or query_ids as a CPU long tensor [B] (ValueError when they do not fit)."""
        if not (isinstance(query, torch.Tensor) and query.is_floating_point() and query.ndim == 2
                and query.shape[0] >= 1 and query.shape[1] == self.dim):
            raise bad(name, list(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__,
                       f"a floating tensor [B, {self.dim}] with B >= 1")
        if query_ids is not None:
            return check_ids(query_ids, query.shape[0], "ShardedMemoryBank: query_ids").cpu()
        return None

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
