"""In-process runs (resources.in_process): the one worker of a run trains in a pooled Ray task (Ray
Train's local mode) instead of Ray Train's controller and worker actors.

What must hold: the same computation and the same record as Ray Train's worker on the same config; no
Ray Train actor for the run; no new process for the next run; the checkpoints in storage.path laid out
as Ray Train lays them out; and `auto` choosing it only where nothing restarts and one worker trains."""
import glob
import os
import time

import pytest
import torch

from conftest import ROOT
from orchestrator.config.loader import ConfigError, load_config
from orchestrator.training import timeline

QUICKSTART = f"{ROOT}/examples/quickstart.yaml"
TINY = ["train.epochs=2", "train.batch_size=128", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=100",
        "train.progress=false", "data.val_fraction=0.1", "eval.random_init_baseline=false"]


@pytest.mark.parametrize("overrides,in_process", [
    ([], True),  # the defaults: one worker, never restarted
    (["resources.workers=2"], False),
    (["train.max_failures=1"], False),
    (["resources.in_process=false"], False),
    (["resources.in_process=true"], True),
])
def test_auto_runs_in_process_only_where_one_worker_trains_and_nothing_restarts(overrides, in_process):
    assert load_config(QUICKSTART, overrides).runs_in_process() is in_process


@pytest.mark.parametrize("overrides", [["resources.workers=2"], ["train.max_failures=1"]])
def test_in_process_true_where_it_cannot_hold_is_refused_naming_the_keys(overrides):
    with pytest.raises(ConfigError) as refused:
        load_config(QUICKSTART, ["resources.in_process=true", *overrides])
    said = str(refused.value)
    assert "resources.in_process: true" in said and "resources.workers: 1 and train.max_failures: 0" in said, said


def train_actors() -> int:
    """Ray Train controller and worker actors ever created in this Ray session (live or dead)."""
    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address
    return sum(1 for actor in list_actors(address=gcs, limit=10_000) if actor.class_name in ("TrainController", "RayTrainWorker"))


def task_of(run_name: str):
    import ray
    from ray.util.state import list_tasks

    [task] = [t for t in list_tasks(address=ray.get_runtime_context().gcs_address, filters=[("name", "=", run_name)], limit=100) if t.state == "FINISHED"]
    return task


@pytest.mark.slow
def test_an_in_process_run_computes_and_records_what_ray_trains_worker_does(ray_local, small_data):
    """Two in-process runs and one through Ray Train's actors, same config and seed, on the shared Ray."""
    from mlflow.tracking import MlflowClient

    from orchestrator.training.run import run_training

    storage = small_data / "runs"
    results, began, actors = {}, {}, [train_actors()]
    for name, setting in (("inproc", "true"), ("inproc2", "true"), ("raytrain", "false")):
        config = load_config(QUICKSTART, TINY + [f"name={name}", f"storage.path={storage}",
                                                 f"resources.in_process={setting}"])
        began[name] = time.time()
        results[name] = run_training(config)
        actors.append(train_actors())
    # no Ray Train controller or worker for the in-process runs; Ray Train's run had its own
    assert actors[1] == actors[0] and actors[2] == actors[0] and actors[3] >= actors[0] + 2, actors
    client = MlflowClient(results["inproc"].tracking_uri)
    runs = {name: client.get_run(result.run_id) for name, result in results.items()}
    assert {run.info.status for run in runs.values()} == {"FINISHED"}

    # the same computation: every epoch's loss and the final scores, to float precision
    def history(name, key):
        return [m.value for m in sorted(client.get_metric_history(results[name].run_id, key), key=lambda m: m.step)]

    for key in ("train/loss", "train/lr"):
        assert len(history("inproc", key)) == 2
        assert history("inproc", key) == pytest.approx(history("raytrain", key), rel=1e-5, abs=1e-6), key
    for key in ("downstream/knn_top1", "downstream/linear_top1", "test/knn_top1", "repr/alignment"):
        assert runs["inproc"].data.metrics[key] == pytest.approx(runs["raytrain"].data.metrics[key], abs=1e-5), key

    # the same record: metric names, params (but the name and the key itself), tags, artifacts
    def params(name):
        return {k: v for k, v in runs[name].data.params.items() if k not in ("name", "resources.in_process")}

    assert set(runs["inproc"].data.metrics) == set(runs["raytrain"].data.metrics)
    assert params("inproc") == params("raytrain")
    assert runs["inproc"].data.tags["sslab.worker_nodes"] == runs["raytrain"].data.tags["sslab.worker_nodes"]
    artifacts = {name: sorted(a.path for a in client.list_artifacts(result.run_id)) for name, result in results.items()}
    assert artifacts["inproc"] == artifacts["raytrain"] and "encoder.pt" in artifacts["inproc"], artifacts

    # storage.path as Ray Train lays it out: <run>/checkpoint_<time>/, the last two (epoch 1's state, the final)
    def kept(name):
        [run_folder] = glob.glob(f"{storage}/{name}-*")
        return [sorted(os.listdir(folder)) for folder in sorted(glob.glob(f"{run_folder}/checkpoint_*/"))]

    assert kept("inproc") == kept("raytrain") == [["train_state.pt"], sorted(os.listdir(results["inproc"].checkpoint_dir))]
    [state] = glob.glob(f"{storage}/inproc-*/checkpoint_*/train_state.pt")
    assert torch.load(state, weights_only=True)["epoch"] == 1
    assert "encoder.pt" in os.listdir(results["inproc"].checkpoint_dir)

    # the second in-process run started no process: its task ran in one that Ray had before the run began
    second = task_of(f"inproc2-{results['inproc2'].run_id[:8]}")
    assert timeline.process_started(second.worker_pid) < began["inproc2"]


def test_a_gpu_runs_process_is_not_kept_for_the_next_run():
    """Ray keeps an idle task process: a GPU one would hold its CUDA context and cached memory on the GPU."""
    from orchestrator.training import in_process

    assert in_process.ON_GPU._default_options["max_calls"] == 1
    assert in_process.ON_CPU._default_options.get("max_calls", 0) == 0  # a CPU run's process is reused
    assert in_process.ON_GPU._function is in_process.ON_CPU._function is in_process.fit_task


WAIT_FOR_SCRIPT = """
import json, signal, sys, time
import ray
from orchestrator.training.in_process import wait_for

ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")

@ray.remote(max_retries=0)
def decode():
    raise ValueError("row 7: cannot decode image")

@ray.remote(max_retries=0)
def fit(loop_config):
    return ray.get(loop_config["data"])  # as a run's task reads the sweep's decoded data

@ray.remote(max_retries=0)
def endless():
    time.sleep(600)

errors = []
for _ in range(int(sys.argv[1])):  # Ray aborted this process within 7-38 of these when every error was cancelled
    try:
        wait_for(fit.remote({"data": decode.remote()}))
    except ray.exceptions.RayTaskError as error:
        errors.append("row 7: cannot decode image" in str(error))

def interrupt(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
ref = endless.remote()
signal.alarm(3)
try:
    wait_for(ref)
    stopped = "not interrupted"
except KeyboardInterrupt:
    try:
        ray.get(ref, timeout=60)
        stopped = "finished"
    except ray.exceptions.TaskCancelledError:
        stopped = "cancelled"
print("RESULT " + json.dumps({"errors": errors, "stopped": stopped}), flush=True)
"""


@pytest.mark.slow  # a Ray of its own in a subprocess: 19 s
def test_waiting_survives_failed_tasks_and_an_interrupted_wait_cancels_the_task(tmp_path):
    """Cancelling a task that just failed aborts the driver inside Ray, so this runs in a process of its own."""
    from conftest import run_cluster_script

    result = run_cluster_script(WAIT_FOR_SCRIPT, ["60"], cwd=str(tmp_path), timeout=240)
    assert result["errors"] == [True] * 60  # every failure raised with its cause, and the driver lived on
    assert result["stopped"] == "cancelled"
