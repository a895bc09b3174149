"""A bank's state for trial checkpoints: state_dict (every shard, gathered as a snapshot),
load_state_dict and reset. A base of ShardedMemoryBank."""
from __future__ import annotations

import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from orchestrator.memory_bank.checks import STATE_FORMAT, BankTimeoutError, bad
from orchestrator.memory_bank.messages import ActorUnavailableError, ShardMessages


class BankCheckpoint(ShardMessages):
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
            raise bad("state", type(state).__name__, f"a dict from ShardedMemoryBank.state_dict() (format {STATE_FORMAT})")
        for key in ("size", "dim", "mode", "num_shards"):
            if state.get(key) != getattr(self, key):
                raise bad(f"state[{key!r}]", state.get(key), f"{getattr(self, key)!r}, as in this bank "
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
