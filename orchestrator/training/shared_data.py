"""A run's decoded data in Ray's object store: decoded once per sweep (or per `sslab train`), and read
by every trial worker from the one copy on its node (zero-copy numpy views), instead of each worker
reading, decoding and holding its own.

The decoding is a Ray task started before the trial's Ray Train run, so it overlaps the start of the
controller and the workers; the workers wait for its result. Its result lives in the object store
of the node that decoded it; Ray copies it once to each other node whose workers read it. The data's
source (a local file, S3) is read by that one task, not by every worker.

SSLAB_DATA_PER_WORKER=1 selects the path before this one: each worker loads its own copy
(bench/data_per_node.py compares both in the same run).
"""
import json
import os
import warnings

import ray
import torch

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.video_workload import VIDEO_KINDS
from orchestrator.training.trial_eval import Splits, load_splits
from workloads.data import ImageDataset

PER_WORKER_ENV = "SSLAB_DATA_PER_WORKER"


def data_key(config: SSLabConfig) -> str:
    """What decides a run's splits: trials that agree on it read the same copy."""
    return json.dumps({"data": config.data.model_dump(mode="json"), "seed": config.seed}, sort_keys=True)


def share(config: SSLabConfig):
    """The object ref of the decoded splits (being decoded), or None where workers load their own data
    (a video workload; SSLAB_DATA_PER_WORKER=1)."""
    if config.workload.kind in VIDEO_KINDS or os.environ.get(PER_WORKER_ENV) == "1":
        return None
    # No CPU reserved: the decoding runs while the trial's workers start, not after them. Retries (on a
    # lost worker or node only; a DataError is not retried) let Ray rebuild a copy lost with its node.
    return decode_splits.options(num_cpus=0, max_retries=3).remote(config.model_dump(mode="json"))


def share_once(shared: dict, config: SSLabConfig):
    """share(config), once per data key in `shared` (a sweep's trials with the same data share a copy)."""
    key = data_key(config)
    if key not in shared:
        shared[key] = share(config)
    return shared[key]


@ray.remote
def decode_splits(config_json: dict) -> dict:
    splits = load_splits(SSLabConfig.model_validate(config_json))
    return {"normalization": splits.normalization,
            **{name: as_arrays(getattr(splits, name)) for name in ("train", "val", "test")}}


def as_arrays(dataset: ImageDataset | None) -> dict | None:
    """numpy arrays: Ray stores them out of band, so a reader gets views of the shared memory."""
    if dataset is None:
        return None
    return {"images": dataset.images.numpy(), "labels": dataset.labels.numpy(), "classes": dataset.classes,
            "source": dataset.source, "content_hash": dataset.content_hash}


def read_splits(ref) -> Splits:
    """The splits decode_splits made, as torch views of the object store's copy (read-only: nothing
    writes into a data set's images; a worker that moves them to a GPU copies them there). A DataError
    of the decoding is raised as itself, as a worker that decoded would have raised it."""
    try:
        stored = ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None
    with warnings.catch_warnings():  # torch warns that the arrays are not writable: they are shared
        warnings.simplefilter("ignore", UserWarning)
        parts = {name: as_dataset(stored[name]) for name in ("train", "val", "test")}
    return Splits(parts["train"], parts["val"], parts["test"], stored["normalization"])


def as_dataset(arrays: dict | None) -> ImageDataset | None:
    if arrays is None:
        return None
    return ImageDataset(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), arrays["classes"],
                        arrays["source"], arrays["content_hash"])
