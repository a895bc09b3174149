"""Sweeps: the same study with pruning on and off, same budget, same seeds.

    .venv/bin/python bench/sweep.py                # 10 trials x 6 epochs: 23 min measured here, under load
    .venv/bin/python bench/sweep.py --quick        # 4 trials of 3 epochs (not timed)

Both arms run `orchestrator.sweep.run_sweep` on examples/cifar10_sweep.yaml's settings (SimCLR,
small ConvNet, the bundled sample) with the same TPE seed, the same n_trials and the same space,
whose temperature range reaches a bad region (up to 5.0) so that a pruner has something to cut:

  off       pruner none: every trial runs all its epochs (the baseline).
  median    Optuna's MedianPruner on the per-epoch kNN of the validation split.

Reported per arm, read back from MLflow: trial-epochs run (the compute: epochs that logged
train/loss, summed over trials), trials pruned, the best objective and its trial's parameters, and
wall time. Then the ratios median/off. Trials run 2 at a time; with concurrency the order in which
results reach TPE depends on timing, so the two arms can sample different points after the first
trials (same seed, same budget; not the same sequence).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_sweep(config):
    """run_sweep(config): its result, wall seconds, an MLflow client of its store and its trial runs."""
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep.driver import run_sweep

    start = time.perf_counter()
    result = run_sweep(config)
    wall = time.perf_counter() - start
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment or config.name)
    return result, wall, client, client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'")


def run_arm(pruner: str, trials: int, epochs: int, seed: int, folder: str) -> dict:
    from orchestrator.config.loader import load_config

    search = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "tpe", "pruner": pruner,
              "n_trials": trials, "max_concurrent_trials": 2, "seed": seed,
              "storage": f"sqlite:///{folder}/optuna.db",
              "space": {"workload.temperature": {"type": "float", "low": 0.05, "high": 5.0, "log": True},
                        "train.batch_size": {"type": "categorical", "choices": [128, 256]}}}
    name = f"bench_sweep_{pruner}"
    tracking = f"sqlite:///{folder}/mlflow.db"
    config = load_config(os.path.join(ROOT, "examples", "cifar10_sweep.yaml"), [
        f"name={name}", f"seed={seed}", f"data.uri={ROOT}/examples/data/cifar10_sample.parquet", f"train.epochs={epochs}", f"tracking.uri={tracking}",
        f"storage.path={folder}/checkpoints", f"search={json.dumps(search)}"])
    result, wall, client, runs = timed_sweep(config)
    trial_epochs = sum(len(client.get_metric_history(r.info.run_id, "train/loss")) for r in runs)
    best = result.best
    return {"pruner": pruner, "trials": len(runs), "pruned": result.counts.get("PRUNED", 0),
            "trial_epochs": trial_epochs, "full_epochs": len(runs) * epochs,
            "best": round(best[1], 4) if best else None, "best_params": best[2] if best else None,
            "wall_s": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 trials of 3 epochs")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trials, epochs = (4, 3) if args.quick else (args.trials, args.epochs)

    from orchestrator.ray_runtime import ensure_ray

    ensure_ray(worker_logs=False)
    results = {}
    for pruner in ("none", "median"):
        with tempfile.TemporaryDirectory(prefix=f"sslab-bench-sweep-{pruner}-") as folder:
            results[pruner] = run_arm(pruner, trials, epochs, args.seed, folder)
        print(json.dumps(results[pruner]), flush=True)
    off, on = results["none"], results["median"]
    print(f"\n{'arm':8} {'trials':>6} {'pruned':>6} {'trial-epochs':>12} {'best kNN':>9} {'wall s':>7}")
    for name, arm in (("off", off), ("median", on)):
        print(f"{name:8} {arm['trials']:>6} {arm['pruned']:>6} {arm['trial_epochs']:>12} {arm['best']!s:>9} {arm['wall_s']:>7}")
    print(f"\ntrial-epochs median/off: {on['trial_epochs'] / off['trial_epochs']:.2f} "
          f"(compute saved: {1 - on['trial_epochs'] / off['trial_epochs']:.0%})")
    print(f"wall time median/off: {on['wall_s'] / off['wall_s']:.2f}")
    if off["best"] is not None and on["best"] is not None:
        print(f"best objective: off {off['best']:.4f}, median {on['best']:.4f} (difference {on['best'] - off['best']:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
