"""`sslab sweep`: an Optuna study run as concurrent Ray Train trials, recorded as one MLflow parent run.

The driver asks the study (through the StudyCoordinator actor, the study's one writer) for
parameters, runs up to `max_concurrent_trials` trials at once (each a `run_training` in a thread of
the driver, each a Ray Train run), and tells the study each outcome. Running it again after the
driver died resumes the same study under the same parent run.
"""
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import ray

from .config import SSLabConfig
from .local_paths import with_absolute_paths
from .ray_runtime import ensure_ray
from .study import apply_params
from .study_actor import StudyCoordinator
from .sweep_record import SweepRecord
from .train_run import run_training

DONE = ("COMPLETE", "PRUNED")


@dataclass
class SweepResult:
    parent_run_id: str
    study_name: str
    best: tuple[int, float, dict] | None
    counts: dict[str, int]


def run_sweep(config: SSLabConfig) -> SweepResult:
    config = with_absolute_paths(config)
    search = config.search
    study_name = search.study_name or config.name
    ensure_ray()
    coordinator = ray.remote(StudyCoordinator).options(num_cpus=0).remote(
        search.model_dump(mode="json"), study_name, config.model_dump(mode="json"))
    record = SweepRecord(config, study_name)
    stale = ray.get(coordinator.fail_stale.remote())
    record.fail_stale_trials(stale)
    deadline = time.time() + search.timeout_minutes * 60 if search.timeout_minutes else None
    base = config.model_dump(mode="json")
    running = {}
    with ThreadPoolExecutor(max_workers=search.max_concurrent_trials) as pool:
        while True:
            counts = ray.get(coordinator.counts.remote())
            done = sum(counts.get(state, 0) for state in DONE)
            budget_left = (search.n_trials is None or done + len(running) < search.n_trials) and (
                deadline is None or time.time() < deadline)
            if budget_left and len(running) < search.max_concurrent_trials:
                number, params = ray.get(coordinator.ask.remote())
                trial_config = SSLabConfig.model_validate({**apply_params(base, params), "search": None})
                running[pool.submit(run_trial, trial_config, number, params, record, coordinator, search)] = number
                continue
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                number = running.pop(future)
                value, state = future.result()
                ray.get(coordinator.tell.remote(number, value, state))
    best = ray.get(coordinator.best.remote())
    record.finish(best, ray.get(coordinator.table.remote()), coordinator)
    result = SweepResult(record.parent_run_id, study_name, best, ray.get(coordinator.counts.remote()))
    ray.kill(coordinator)
    return result


def run_trial(config: SSLabConfig, number: int, params: dict, record: "SweepRecord", coordinator, search):
    """One trial: (objective value, Optuna state). A failed trial does not stop the sweep."""
    tags = record.trial_tags(number)
    pruning = {"coordinator": coordinator, "trial": number, "objective": search.objective} if search.pruner != "none" else None
    try:
        result = run_training(config, kind="trial", tags=tags, run_name=f"trial-{number}", pruning=pruning)
    except Exception:  # the trial's MLflow run is already FAILED with the error
        return None, "FAIL"
    if result.pruned:
        return None, "PRUNED"
    value = record.objective_value(result.run_id, search.objective)
    return (value, "COMPLETE") if value is not None else (None, "FAIL")
