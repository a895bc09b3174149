"""Tensors between a bank copy and its shards travel as numpy arrays: Ray stores a numpy array
as one out-of-band buffer and hands it back as a zero-copy view, where a torch tensor goes through
torch's pickle reducer. On the 2-core dev VM that cut a 2-shard round trip carrying a [256, 128]
float32 array by ~1.6 ms (query out) and ~2.6 ms (partials back). bfloat16 has no numpy dtype:
such tensors (and anything else that is not a tensor) pass unchanged."""
from __future__ import annotations

import numpy as np
import torch

WIRE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64)  # numpy has these


def to_wire(obj):
    """Tensors (alone, or in a tuple/list) as numpy arrays."""
    if isinstance(obj, torch.Tensor) and obj.dtype in WIRE_DTYPES:
        return obj.detach().cpu().numpy()
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_wire(o) for o in obj)
    return obj


def from_wire(obj):
    """The inverse of to_wire: numpy arrays as (writable, owned) torch tensors."""
    if isinstance(obj, np.ndarray):
        return torch.tensor(obj)  # a copy: what Ray returns is a read-only view of its store
    if isinstance(obj, (tuple, list)):
        return type(obj)(from_wire(o) for o in obj)
    return obj
