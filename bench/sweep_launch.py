"""A sweep's wall time with each trial through Ray Train's actors against in-process trials, same run.

    .venv/bin/python bench/sweep_launch.py                 # 8 one-epoch trials, 2 at a time, each arm twice
    .venv/bin/python bench/sweep_launch.py --trials 4 --rounds 1

The same study (the quick start's SimCLR, the bundled sample, a fixed grid of temperatures, so both
arms run the same trials), once with `resources.in_process=false` (each trial a Ray Train run: its
controller, placement group and worker actor) and once with the default `auto` (each trial's one
worker in a pooled Ray task, Ray Train's local mode: orchestrator/training/in_process.py). The arms
alternate in one local Ray (2 CPUs), the first round's first trial also paying for the cold imports.

Reported per arm: the sweep's wall time, the trials' epochs (summed from MLflow: steps x batch /
train/images_per_s) and the difference, the sweep's overhead; then the ratio in-process / Ray Train
of the overheads, median over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["train.epochs=1", "train.batch_size=128", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.progress=false", "data.val_fraction=0.1", "eval.random_init_baseline=false"]


def run_arm(in_process: str, trials: int, folder: str) -> dict:
    from orchestrator.config.loader import load_config
    from sweep import timed_sweep  # bench/sweep.py

    temperatures = [round(0.1 + 0.05 * index, 2) for index in range(trials)]
    search = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "grid", "pruner": "none",
              "n_trials": trials, "max_concurrent_trials": 2, "seed": 0, "storage": f"sqlite:///{folder}/optuna.db",
              "space": {"workload.temperature": {"type": "categorical", "choices": temperatures}}}
    name = f"bench_launch_{in_process}"
    tracking = f"sqlite:///{folder}/mlflow.db"
    config = load_config(os.path.join(ROOT, "examples", "quickstart.yaml"), TINY + [
        f"name={name}", f"data.uri={ROOT}/examples/data/cifar10_sample.parquet", f"tracking.uri={tracking}",
        f"storage.path={folder}/checkpoints", f"resources.in_process={in_process}", f"search={json.dumps(search)}"])
    result, wall, client, runs = timed_sweep(config)
    epochs_s = 0.0
    for run in runs:
        steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/steps")}
        for m in client.get_metric_history(run.info.run_id, "train/images_per_s"):
            epochs_s += steps[m.step] * config.train.batch_size / m.value
    return {"in_process": in_process, "trials": len(runs), "finished": result.counts.get("COMPLETE", 0),
            "wall_s": round(wall, 1), "epochs_s": round(epochs_s, 1), "overhead_s": round(wall - epochs_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from orchestrator.ray_runtime import ensure_ray

    ensure_ray(worker_logs=False)
    results = {"false": [], "auto": []}
    for round_ in range(args.rounds):
        for arm in results:
            with tempfile.TemporaryDirectory(prefix=f"sslab-bench-launch-{arm}-") as folder:
                results[arm].append(run_arm(arm, args.trials, folder))
            print(json.dumps({"round": round_, **results[arm][-1]}), flush=True)
    overhead = {arm: statistics.median(r["overhead_s"] for r in runs) for arm, runs in results.items()}
    wall = {arm: statistics.median(r["wall_s"] for r in runs) for arm, runs in results.items()}
    print(f"median sweep wall time: Ray Train actors {wall['false']:.1f} s, in-process {wall['auto']:.1f} s "
          f"(ratio {wall['auto'] / wall['false']:.2f})")
    print(f"median sweep overhead (wall - epochs): Ray Train actors {overhead['false']:.1f} s, in-process "
          f"{overhead['auto']:.1f} s (ratio {overhead['auto'] / overhead['false']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
