"""The memory bank of negatives, plain PyTorch: one shard's storage and math (BankShard), the exact
InfoNCE from per-shard partials (merge_partials, exact_info_nce), the protocol the training step
uses (NegativeBank) and its in-process implementation (LocalBank), the own-id exclusion shared by
both banks (own_mask, merge_topk: no image is its own negative). The Ray-backed, sharded bank
is orchestrator.memory_bank.ShardedMemoryBank, built on the same pieces."""

from workloads.bank.exact_info_nce import exact_info_nce, merge_partials
from workloads.bank.local import LocalBank
from workloads.bank.own_id import merge_topk, own_mask
from workloads.bank.protocol import NegativeBank
from workloads.bank.shard import BankShard

__all__ = ["BankShard", "merge_partials", "exact_info_nce", "NegativeBank", "LocalBank",
           "own_mask", "merge_topk"]
