"""Image data: Parquet (local or S3), image folders, CIFAR-10; decoded once into memory.

The names below are imported on first use, so that `workloads.data.normalization` and
`workloads.data.split` (torch only) do not pull in the readers (pyarrow, torchvision, PIL).
"""
import importlib

_EXPORTS = {
    "ImageDataset": ".dataset", "DataError": ".errors", "load_images": ".load", "load_labels": ".load",
    "CIFAR10": ".normalization", "Normalization": ".normalization", "active_normalization": ".normalization",
    "using_normalization": ".normalization", "check_class_sizes": ".split", "split_three_ways": ".split",
    "stratified_split": ".split",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
