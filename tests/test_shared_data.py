"""A run's decoded data in Ray's object store (orchestrator.training.shared_data): the same splits as a
worker's own load, read as views of one shared copy; a decoding error raised as itself."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from conftest import ROOT, SAMPLE

from orchestrator.config.loader import load_config
from orchestrator.training.shared_data import data_key, read_splits, share, share_once
from orchestrator.training.trial_eval import load_splits
from workloads.data import DataError

SPLITS = ["data.val_fraction=0.2", "data.test_fraction=0.1"]


def test_shared_splits_equal_a_workers_own_load_and_are_read_in_place_by_every_process(ray_local):
    config = load_config(f"{ROOT}/examples/quickstart.yaml", SPLITS + [f"data.uri={SAMPLE}"])
    ref = share(config)
    shared, own = read_splits(ref), load_splits(config)
    for name in ("train", "val", "test"):
        a, b = getattr(shared, name), getattr(own, name)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert (a.classes, a.source, a.content_hash) == (b.classes, b.source, b.content_hash)
    assert shared.normalization == own.normalization
    # zero-copy: a second read in this process maps the same memory, and another process reads the
    # images from shared memory (RssShmem) without a private copy of them
    assert read_splits(ref).train.images.data_ptr() == shared.train.images.data_ptr()
    reader = Reader.remote()  # an actor: a process of its own, not the task worker that decoded (it holds the pages)
    private, in_shared_memory = ray_local.get(reader.memory_of_reading.remote([ref]))
    ray_local.kill(reader)
    size = shared.train.images.numel()
    assert in_shared_memory >= size and private < size / 4, (private, in_shared_memory, size)
    # a sweep's trials with the same data share one ref; other splits get their own
    cache = {}
    assert share_once(cache, config) is share_once(cache, config) and len(cache) == 1
    other = load_config(f"{ROOT}/examples/quickstart.yaml", [f"data.uri={SAMPLE}", "seed=1"])
    assert data_key(other) != data_key(config)


def test_a_decoding_error_reaches_the_worker_as_itself(ray_local, tmp_path):
    table = pq.read_table(SAMPLE)
    images = table.column("image").to_pylist()
    images[7] = b"corrupt"
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())), tmp_path / "bad.parquet")
    config = load_config(f"{ROOT}/examples/quickstart.yaml", [f"data.uri={tmp_path / 'bad.parquet'}"])
    with pytest.raises(DataError, match="row 7: cannot decode image"):
        read_splits(share(config))


@ray.remote(num_cpus=0)
class Reader:
    def memory_of_reading(self, refs):
        """(private, shared) bytes this process gained by reading the splits and touching every image."""
        def status():
            with open("/proc/self/status") as handle:
                fields = dict(line.split(":", 1) for line in handle)
            return [int(fields[key].split()[0]) * 1024 for key in ("RssAnon", "RssShmem")]

        before = status()
        images = read_splits(refs[0]).train.images
        assert int(images.sum()) > 0  # every page read
        after = status()
        return after[0] - before[0], after[1] - before[1]
