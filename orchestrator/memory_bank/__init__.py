"""The trial's shared, sharded memory bank on Ray actors (API and semantics: client.py).
Imports Ray and workloads.bank; nothing else of orchestrator but ray_runtime."""
from orchestrator.memory_bank.checks import BankError, BankTimeoutError
from orchestrator.memory_bank.client import ShardedMemoryBank

__all__ = ["BankError", "BankTimeoutError", "ShardedMemoryBank"]
