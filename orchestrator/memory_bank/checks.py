"""The memory bank's errors, argument checks and small helpers (no Ray here)."""
from __future__ import annotations

import math

import numpy as np
import torch

from workloads.bank.shard import DTYPES

STATE_FORMAT = "sslab.memory_bank/1"
PLACEMENT_STRATEGIES = ("SPREAD", "STRICT_SPREAD", "PACK", "STRICT_PACK")


class BankError(RuntimeError):
    """A shard failed a request (the message says which and why)."""


class BankTimeoutError(TimeoutError):
    """A query waited longer than the bank's `timeout` (for other ranks' pushes, or a refill)."""


def bad(name: str, value, valid: str) -> ValueError:
    return ValueError(f"ShardedMemoryBank: {name}={value!r} is not valid; {name} must be {valid}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_dtype(dtype) -> str:
    for name, value in DTYPES.items():
        if dtype == name or dtype == value:
            return name
    raise bad("dtype", dtype, f"one of {list(DTYPES)} (or the torch dtypes)")


def tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):  # tensors on the wire (orchestrator.memory_bank.wire)
        return obj.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(o) for o in obj)
    return 0


def check_arguments(size, dim, num_shards, mode, momentum, dtype, world_size, seed, snapshot_every, timeout,
                    num_cpus, max_restarts, max_task_retries, placement_strategy) -> tuple[int, int, str]:
    """(shards S, shard capacity c, dtype name), or a ValueError naming the argument and what is valid."""
    if not (is_int(size) and size >= 1):
        raise bad("size", size, "an int >= 1 (queue: K keys; instance: N sample ids)")
    if not (is_int(dim) and dim >= 1):
        raise bad("dim", dim, "an int >= 1 (the key dimension)")
    if not (is_int(num_shards) and 1 <= num_shards <= size):
        raise bad("num_shards", num_shards, f"an int in [1, size={size}]")
    if mode not in ("queue", "instance"):
        raise bad("mode", mode, "'queue' (MoCo: the last size keys) or 'instance' (InstDisc: one entry per id)")
    if mode == "queue" and size % num_shards:
        raise bad("num_shards", num_shards, f"a divisor of size={size} in mode='queue'")
    S = num_shards
    c = size // S if mode == "queue" else math.ceil(size / S)
    if (S - 1) * c >= size:
        raise bad("num_shards", num_shards, f"such that every shard holds ids in mode='instance' "
                  f"((num_shards - 1) * ceil(size / num_shards) < size={size})")
    if not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and 0 <= momentum < 1):
        raise bad("momentum", momentum, "a number in [0, 1)")
    dtype_name = check_dtype(dtype)
    if not (is_int(world_size) and world_size >= 1):
        raise bad("world_size", world_size, "an int >= 1 (the number of ranks that push each step)")
    if not is_int(seed):
        raise bad("seed", seed, "an int")
    if not (is_int(snapshot_every) and snapshot_every >= 0):
        raise bad("snapshot_every", snapshot_every, "an int >= 0 (pushes between snapshots; 0: only on state_dict())")
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
        raise bad("timeout", timeout, "a number of seconds > 0")
    if not (isinstance(num_cpus, (int, float)) and not isinstance(num_cpus, bool) and num_cpus >= 0):
        raise bad("num_cpus", num_cpus, "a number >= 0 (CPUs reserved per shard; fractions are fine)")
    for name, value in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries)):
        if not (is_int(value) and value >= -1):
            raise bad(name, value, "an int >= -1 (-1: unlimited)")
    if placement_strategy not in PLACEMENT_STRATEGIES:
        raise bad("placement_strategy", placement_strategy, f"one of {', '.join(PLACEMENT_STRATEGIES)}")
    return S, c, dtype_name
