"""Data once per node: a 4-trial sweep with the data decoded once into Ray's object store, against
the path before it (each trial worker decodes and holds its own copy), in the same run.

    .venv/bin/python bench/data_per_node.py              # 4 copies of the bundled sample: 20,000 images
    .venv/bin/python bench/data_per_node.py --copies 1   # the sample as it is (5,000 images)

Each arm is a child process with its own local Ray (2 CPUs) that runs one sweep of the quick start:
4 trials of 1 epoch, 2 at a time, 1 worker of 1 CPU each, random temperatures (seed 0), on a Parquet
file made of `--copies` copies of the bundled sample. The arm `per_worker` sets SSLAB_DATA_PER_WORKER=1
(the old path); `object_store` is the default. From orchestrator.training.timeline's marks:

  memory        per trial worker, the peak of its private memory (RssAnon: heap and tensors) and of
                its RSS (VmRSS, which also counts the libraries' file pages and the pages of the object
                store it reads), summed over the 4 trials' workers: up to the end of the epoch (data
                and training) and over the whole worker (with the final evaluation); and the private
                sum plus the object store's one decoded copy.
  first step    per trial, seconds from run_training's start (in the trial's task) to the end of its
                first training step; the median over the trials.

Ratios: object_store / per_worker.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "examples", "data", "cifar10_sample.parquet")
SEARCH = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "random", "pruner": "none",
          "n_trials": 4, "max_concurrent_trials": 2, "seed": 0,
          "space": {"workload.temperature": {"type": "float", "low": 0.1, "high": 0.5, "log": True}}}
TINY = ["train.epochs=1", "train.batch_size=256", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.progress=false", "eval.random_init_baseline=false", "eval.linear_probe=false",
        "resources.workers=1", "resources.cpus_per_worker=1"]


def make_data(folder: str, copies: int) -> str:
    """`copies` copies of the bundled sample, one Parquet file (same classes, `copies` times the images)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(SAMPLE)
    path = os.path.join(folder, f"sample_x{copies}.parquet")
    pq.write_table(pa.concat_tables([table] * copies), path)
    return path


def child(data: str, folder: str) -> dict:
    """One sweep in this process (its own Ray); the arm's figures from the timeline."""
    os.chdir(folder)
    timeline_file = os.path.join(folder, "timeline.jsonl")
    os.environ["SSLAB_TIMELINE"] = timeline_file  # before Ray starts: every Ray process inherits it
    import ray

    from orchestrator.config.loader import load_config
    from orchestrator.sweep.driver import run_sweep

    config = load_config(os.path.join(ROOT, "examples", "quickstart.yaml"), TINY + [
        "name=data_per_node", f"data.uri={data}", f"tracking.uri=sqlite:///{folder}/mlflow.db",
        f"storage.path={folder}/checkpoints", f"search={json.dumps({**SEARCH, 'storage': f'sqlite:///{folder}/optuna.db'})}"])
    result = run_sweep(config)
    ray.shutdown()
    marks = [json.loads(line) for line in open(timeline_file)]
    return {"trials": result.counts, **figures(marks)}


def decoded_bytes(data: str) -> int:
    """The decoded data set's size (uint8 3 x 32 x 32 images, int64 labels): the object store's one copy."""
    import pyarrow.parquet as pq

    return pq.read_metadata(data).num_rows * (3 * 32 * 32 + 8)


def figures(marks: list[dict]) -> dict:
    ends = [m for m in marks if m["phase"] == "worker_end"]
    epochs = [m for m in marks if m["phase"] == "epoch_end" and m.get("epoch") == 0]
    runs = {m["run"]: m["name"] for m in marks if m["phase"] == "fit_start"}  # Ray Train run -> trial
    starts = {m["name"]: m["t"] for m in marks if m["phase"] == "trial_start"}
    first = {runs[m["run"]]: m["t"] for m in marks if m["phase"] == "first_step" and m.get("rank") == 0}
    to_first = [first[name] - starts[name] for name in first]
    return {"workers": len(ends),
            "epoch_peak_private_bytes_summed": sum(m["peak_private"] for m in epochs),
            "epoch_peak_rss_bytes_summed": sum(m["peak_VmRSS"] for m in epochs),
            "peak_private_bytes_summed": sum(m["peak_private"] for m in ends),
            "peak_rss_bytes_summed": sum(m["peak_VmRSS"] for m in ends),
            "peak_shared_bytes_max": max(m["peak_RssShmem"] for m in ends),
            "start_to_first_step_s": sorted(round(s, 2) for s in to_first),
            "start_to_first_step_median_s": round(statistics.median(to_first), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="sslab-data-per-node-") as folder:
        data = make_data(folder, args.copies)
        copy_bytes = decoded_bytes(data)
        for arm, env in (("per_worker", {"SSLAB_DATA_PER_WORKER": "1"}), ("object_store", {})):
            arm_folder = os.path.join(folder, arm)
            os.makedirs(arm_folder)
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", data, "--folder", arm_folder],
                                 capture_output=True, text=True, env={**os.environ, **env})
            if out.returncode != 0:
                raise RuntimeError(f"arm {arm} failed:\n{out.stderr[-4000:]}")
            results[arm] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({"arm": arm, **results[arm]}), flush=True)
    old, new = results["per_worker"], results["object_store"]
    for key in ("epoch_peak_private_bytes_summed", "epoch_peak_rss_bytes_summed", "peak_private_bytes_summed",
                "peak_rss_bytes_summed", "start_to_first_step_median_s"):
        print(f"{key}: object_store / per_worker = {new[key] / old[key]:.2f}")
    print(f"decoded data: {copy_bytes / 2**20:.1f} MiB")
    for key in ("epoch_peak_private_bytes_summed", "peak_private_bytes_summed"):
        print(f"{key} + the object store's copy: object_store / per_worker = "
              f"{(new[key] + copy_bytes) / old[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
