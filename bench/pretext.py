"""Pretext workloads against the contrastive one: downstream kNN after the same training budget.

    .venv/bin/python bench/pretext.py                     # every workload, 8 epochs each (not timed)
    .venv/bin/python bench/pretext.py --epochs 5          # 18.5 min measured here (docs/benchmarks.md)
    .venv/bin/python bench/pretext.py --epochs 2 --only rotation jigsaw

Each workload trains its example config (examples/<kind>.yaml; examples/quickstart.yaml for the
contrastive baseline, SimCLR / NT-Xent) on the bundled sample with the same backbone (small ConvNet,
width 16), the same epochs, batch size 128, 1 worker with 2 CPU threads, and the same downstream
evaluation: kNN top-1 (k = 50) on the validation split, against the same encoder at random
initialisation. Reported per workload, read back from MLflow: kNN top-1, the gain over random
init, the ratio to the contrastive run's kNN (the baseline measured in the same run), the pretext
metric at the first and last epoch, and the run's wall time (the CPU each workload spent: the
budget is equal in epochs and images, not in seconds).
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
KINDS = ("contrastive", "rotation", "exemplar", "relative_position", "jigsaw", "colorization", "denoising",
         "context_encoder", "split_brain")
METRIC = {"rotation": "accuracy", "exemplar": "accuracy", "relative_position": "accuracy", "jigsaw": "accuracy",
          "colorization": "mse_ab", "denoising": "mse", "context_encoder": "mse_masked", "split_brain": "loss_l_to_ab"}


def run(kind: str, epochs: int, folder: str) -> dict:
    from mlflow.tracking import MlflowClient

    from orchestrator.config.loader import load_config
    from orchestrator.training.run import run_training

    example = "quickstart" if kind == "contrastive" else kind
    tracking = f"sqlite:///{folder}/mlflow.db"
    config = load_config(os.path.join(ROOT, "examples", f"{example}.yaml"), [
        "search=null", f"name=bench_{kind}", f"data.uri={ROOT}/examples/data/cifar10_sample.parquet",
        f"train.epochs={epochs}", "train.batch_size=128", "train.progress=false", "model.width=16",
        "resources.cpus_per_worker=2", "eval.random_init_baseline=true", "eval.linear_probe=false",
        f"tracking.uri={tracking}", f"storage.path={folder}/checkpoints"])
    start = time.perf_counter()
    result = run_training(config)
    wall = time.perf_counter() - start
    client = MlflowClient(tracking)
    metrics = client.get_run(result.run_id).data.metrics
    row = {"workload": kind, "knn_top1": metrics["downstream/knn_top1"],
           "random_init": metrics["downstream/random_init/knn_top1"], "wall_s": round(wall, 1)}
    if kind in METRIC:
        history = client.get_metric_history(result.run_id, f"pretext/{METRIC[kind]}")
        values = [m.value for m in sorted(history, key=lambda m: m.step)]
        row.update(pretext_metric=METRIC[kind], first=round(values[0], 4), last=round(values[-1], 4))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--only", nargs="*", choices=KINDS, help="these workloads (the contrastive baseline always runs)")
    args = parser.parse_args()
    kinds = ["contrastive"] + [k for k in (args.only or KINDS) if k != "contrastive"]

    from orchestrator.ray_runtime import ensure_ray

    ensure_ray(worker_logs=False)
    rows = []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"sslab-bench-pretext-{kind}-") as folder:
            rows.append(run(kind, args.epochs, folder))
        print(json.dumps(rows[-1]), flush=True)
    baseline = rows[0]["knn_top1"]
    print(f"\n{'workload':18} {'kNN':>6} {'random':>7} {'gain':>6} {'/contrastive':>12} {'pretext metric first -> last':>34} {'wall s':>7}")
    for row in rows:
        trend = f"{row['pretext_metric']} {row['first']} -> {row['last']}" if "first" in row else ""
        print(f"{row['workload']:18} {row['knn_top1']:6.3f} {row['random_init']:7.3f} {row['knn_top1'] - row['random_init']:+6.3f} "
              f"{row['knn_top1'] / baseline:12.2f} {trend:>34} {row['wall_s']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
