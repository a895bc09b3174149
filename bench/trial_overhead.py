"""A trial's fixed cost: where its first seconds go, and its overhead against an earlier code path.

    .venv/bin/python bench/trial_overhead.py                         # this tree only: the phases
    .venv/bin/python bench/trial_overhead.py --baseline 4eca81a      # and that commit's tree, same run

Each arm is a child process with its own local Ray (2 CPUs) that runs `--runs` one-epoch `sslab
train`s of the quick start, one after the other (run_training, as the CLI calls it: MLflow on a SQLite
file, Ray Train with one worker, the final evaluation), with the tiny settings of the e2e tests.

  overhead   a run's wall time minus its epochs' time; the epochs' time is read back from MLflow
             (steps x batch / train/images_per_s per epoch), so it is measured the same way in a
             tree without sslab's timeline marks. The first run of an arm also pays for Ray's start
             and cold imports; the table shows it and the median of the others.
  phases     (this tree) from orchestrator.training.timeline's marks: run_training's start -> the
             TorchTrainer's fit -> the worker function's start -> data ready -> the end of the
             first step -> the epochs -> the end of fit -> the end of run_training.

The arms alternate (baseline, this tree, baseline, this tree with --rounds 2). The ratio is this tree's
median overhead / the baseline's, over the runs after each arm's first.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "examples", "data", "cifar10_sample.parquet")
TINY = ["train.epochs=1", "train.batch_size=128", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=200",
        "train.progress=false", "data.val_fraction=0.1", "eval.random_init_baseline=false"]
PHASES = ("trial_start", "fit_start", "worker_start", "data_ready", "first_step", "epoch_end", "fit_end", "run_end")


def child(tree: str, runs: int, folder: str) -> list[dict]:
    """In this process: `runs` one-epoch trainings with the code of `tree`; one dict per run."""
    sys.path.insert(0, tree)
    os.chdir(folder)
    timeline_file = os.path.join(folder, "timeline.jsonl")
    os.environ["SSLAB_TIMELINE"] = timeline_file  # before Ray starts: its workers inherit it
    from mlflow.tracking import MlflowClient

    from orchestrator.config.loader import load_config
    from orchestrator.ray_runtime import ensure_ray
    from orchestrator.training.run import run_training

    import ray

    ensure_ray(worker_logs=False)
    results = []
    for index in range(runs):
        config = load_config(os.path.join(tree, "examples", "quickstart.yaml"), TINY + [
            f"name=overhead{index}", f"data.uri={SAMPLE}", f"tracking.uri=sqlite:///{folder}/mlflow.db",
            f"storage.path={folder}/checkpoints"])
        start = time.time()
        result = run_training(config)
        wall = time.time() - start
        client = MlflowClient(result.tracking_uri)
        speeds = [m.value for m in client.get_metric_history(result.run_id, "train/images_per_s")]
        epochs_s = sum(epoch_images(config) / speed for speed in speeds)
        results.append({"run": index, "start": start, "wall_s": wall, "epochs_s": epochs_s, "name": result.run_id[:8]})
    ray.shutdown()
    marks = [json.loads(line) for line in open(timeline_file)] if os.path.exists(timeline_file) else []
    for result in results:
        result["phases"] = phases_of(marks, result)
    return results


def epoch_images(config) -> int:
    """Images one epoch trains on: whole global batches of the training split (as the worker splits it)."""
    from workloads.data import load_labels, split_three_ways

    labels, classes = load_labels(config.data.uri)
    train = split_three_ways(labels, config.data.val_fraction, config.data.test_fraction, config.seed, classes)[0]
    return len(train) // config.train.batch_size * config.train.batch_size


def phases_of(marks: list[dict], result: dict) -> dict:
    """Seconds from run_training's start to each mark of this run (the first rank-0 mark of each phase)."""
    mine = [m for m in marks if m.get("run", "").endswith(result["name"]) or m.get("name") == f"overhead{result['run']}"
            and m["t"] >= result["start"] - 1]
    found = {}
    for m in mine:
        if m.get("rank", 0) == 0 and m["phase"] not in found:
            found[m["phase"]] = round(m["t"] - result["start"], 2)
            if m["phase"] == "worker_start":
                found["worker_process_started"] = round(m["process_started"] - result["start"], 2)
                loaded = [n["t"] for n in marks if n["phase"] == "worker_module_loaded" and n["pid"] == m["pid"]
                          and n["t"] <= m["t"]]
                if loaded:  # sslab's worker module imported (the train function is unpickled in the worker)
                    found["worker_module_loaded"] = round(max(loaded) - result["start"], 2)
    found["run_end"] = round(result["wall_s"], 2)
    return found


def run_arm(tree: str, runs: int) -> list[dict]:
    """A child process of this script with `tree`'s code; its runs' results."""
    with tempfile.TemporaryDirectory(prefix="sslab-overhead-") as folder:
        # PYTHONPATH: Ray's workers inherit it (they do not inherit the child's sys.path), so they run
        # `tree`'s code too, not the editable install's
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", tree, "--runs", str(runs),
                              "--folder", folder], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": tree})
        if out.returncode != 0:
            raise RuntimeError(f"arm {tree} failed:\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def export_tree(revision: str, folder: str) -> str:
    """`revision`'s files (git archive) in `folder`: the baseline's code path, run beside this one."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", revision], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def overhead(runs: list[dict]) -> float:
    """The median overhead of the runs after the arm's first (which also starts Ray and imports cold)."""
    return statistics.median(r["wall_s"] - r["epochs_s"] for r in runs[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a git revision whose tree is the baseline arm")
    parser.add_argument("--runs", type=int, default=4, help="runs per arm and round (the first is not counted)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.runs, args.folder)))
        return 0
    arms = {"this": []}
    with tempfile.TemporaryDirectory(prefix="sslab-baseline-") as old:
        if args.baseline:
            arms = {"baseline": [], "this": []}
            export_tree(args.baseline, old)
        for round_ in range(args.rounds):
            for arm in arms:
                runs = run_arm(old if arm == "baseline" else ROOT, args.runs)
                arms[arm].append(runs)
                for run in runs:
                    print(json.dumps({"arm": arm, "round": round_, **{k: round(v, 2) if isinstance(v, float) else v
                                                                      for k, v in run.items() if k != "start"}}),
                          flush=True)
    summary = {arm: statistics.median(overhead(runs) for runs in rounds) for arm, rounds in arms.items()}
    print(json.dumps({"median_overhead_s": {arm: round(value, 2) for arm, value in summary.items()}}))
    if "baseline" in summary:
        print(f"overhead ratio this / baseline: {summary['this'] / summary['baseline']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
