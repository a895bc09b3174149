"""Rebuild the bundled quick-start sample from the full CIFAR-10 training Parquet.

    python examples/data/make_sample.py ../shared/data/cifar10-train.parquet examples/data/cifar10_sample.parquet

Takes PER_CLASS rows of each class, chosen with a fixed seed, keeps the schema and its metadata.
"""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PER_CLASS = 500
SEED = 0


def main(source: str, target: str) -> None:
    table = pq.read_table(source)
    labels = table.column("label").to_numpy()
    rng = np.random.default_rng(SEED)
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False) for c in np.unique(labels)]
    )
    sample = table.take(pa.array(np.sort(picked)))
    pq.write_table(sample, target, row_group_size=len(sample), compression="none")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
