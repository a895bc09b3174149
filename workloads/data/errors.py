from workloads.errors import DataError

__all__ = ["DataError"]
