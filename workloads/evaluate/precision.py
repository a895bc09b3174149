"""The numeric precision and memory layout frozen features are computed in.

A run's final evaluation and the pruner's per-epoch validation can run the backbone as training ran
it (bf16 autocast, NHWC activations): the same speed-up training had (bf16 tensor cores on GPUs,
AVX512-BF16/AMX on CPUs), for scores that differ from fp32 ones by bf16's rounding. Every function
defaults to fp32 NCHW, so exact scores stay the default of the building blocks.
"""
from contextlib import nullcontext
from typing import NamedTuple

import torch

PRECISIONS = ("auto", "fp32", "bf16")  # train.precision's vocabulary


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """train.precision's rule on `device`: 'auto' is bf16 on CUDA and fp32 elsewhere; 'fp32'/'bf16' as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: str | torch.device):
    """bf16 autocast on `device` where `precision` resolves to bf16 there; no context for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class FeaturePrecision(NamedTuple):
    """How features are (were) computed: the resolved precision ('fp32' or 'bf16') and NHWC input.

    Its fields are the keyword arguments of extract_features and downstream_scores (`**p._asdict()`),
    and its dict is what encoder.pt records, so `sslab eval` can compute the scores the same way."""

    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def from_record(cls, record: dict | None) -> "FeaturePrecision":
        """From a checkpoint's record; fp32 NCHW for checkpoints written before scores recorded it."""
        record = record or {}
        return cls(resolve_precision(str(record.get("precision", "fp32")), "cpu"), bool(record.get("channels_last", False)))


FP32 = FeaturePrecision()
