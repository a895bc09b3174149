"""The memory bank of negatives, plain PyTorch: one shard's storage and math (BankShard), the exact
InfoNCE from per-shard partials (merge_partials, exact_info_nce), the protocol the training step
uses (NegativeBank) and its in-process implementation (LocalBank). The Ray-backed, sharded bank
is orchestrator.memory_bank.ShardedMemoryBank, built on the same pieces."""

from .exact_info_nce import exact_info_nce, merge_partials
from .local import LocalBank
from .protocol import NegativeBank
from .shard import BankShard

__all__ = ["BankShard", "merge_partials", "exact_info_nce", "NegativeBank", "LocalBank"]
