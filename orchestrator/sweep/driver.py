"""`sslab sweep`: an Optuna study run as concurrent Ray Train trials, recorded as one MLflow parent run.

The driver asks the study (through the StudyCoordinator actor, the study's one writer) for
parameters, runs up to `max_concurrent_trials` trials at once (each a `run_training` in a Ray task of
its own, which owns the trial's Ray Train run: killing the task ends the trial and frees its
resources), and tells the study each outcome.

Resume: running it again after the driver died continues the same study under the same parent run.
Trials the dead driver left RUNNING in the study are settled from their MLflow runs: a run that
finished (or was pruned) before the driver died is told to the study as such and not run again; the
others are marked FAIL (their MLflow runs FAILED, tag sslab.error) and their parameters queued to run
once more. `n_trials` counts the study's COMPLETE and PRUNED trials in total, over every run.

Selection reads the validation split only: the pruner gets the objective each epoch (measured on
val where it is not a training metric, orchestrator.training.trial_eval), and a trial's value is its final
val metric. The test split's scores stay on the trial runs; the parent run shows the best trial's
as best/test/... Before any of this, `preflight` refuses an objective the pruner cannot have every
epoch and data whose classes cannot fill the three splits.

A driver that stops on an error, or is stopped (Ctrl-C; SIGTERM, e.g. `ray job stop`, which Ray's
handler turns into SystemExit), leaves its parent run FAILED (tag sslab.error) or KILLED, the trials
it was running FAILED or KILLED in MLflow and FAIL in the study, queued for the next run.
"""
import time
from dataclasses import dataclass, field

import ray

from orchestrator.config.loader import ConfigError
from orchestrator.config.local_paths import with_absolute_paths
from orchestrator.config.schema import SSLabConfig
from orchestrator.config.search_checks import apply_params
from orchestrator.config.secrets import redact_text
from orchestrator.ray_runtime import ensure_ray
from orchestrator.services import check_services
from orchestrator.sweep.coordinator import start_coordinator
from orchestrator.sweep.record import SweepRecord
from orchestrator.training.run import run_training
from orchestrator.config.video_workload import VIDEO_KINDS
from orchestrator.training.trial_eval import check_pruning_objective, check_splits

DONE = ("COMPLETE", "PRUNED")


@dataclass
class SweepResult:
    parent_run_id: str
    study_name: str
    best: tuple[int, float, dict] | None
    counts: dict[str, int]
    tracking_uri: str  # absolute: the MLflow store the sweep wrote to
    best_test: dict[str, float] = field(default_factory=dict)  # the best trial's held-out test/ scores


def run_sweep(config: SSLabConfig) -> SweepResult:
    config = with_absolute_paths(config)
    search = config.search
    study_name = search.study_name or config.name
    preflight(config)
    ensure_ray(worker_logs=False)  # the driver prints one line per trial
    coordinator = start_coordinator(config, study_name)  # named: a second driver of this study stops here
    try:
        record = SweepRecord(config, study_name)
    except BaseException:
        ray.kill(coordinator)
        raise
    try:
        settle(coordinator, record, "the sweep driver stopped while this trial ran")  # resume
        drive(config, coordinator, record)
        best = ray.get(coordinator.best.remote())
        best_test = record.finish(best, ray.get(coordinator.table.remote()), coordinator)
        result = SweepResult(record.parent_run_id, study_name, best, ray.get(coordinator.counts.remote()),
                             config.tracking.uri, best_test)
    except BaseException as error:
        stop(error, coordinator, record)
        raise
    ray.kill(coordinator)
    return result


def preflight(config: SSLabConfig) -> None:
    """Before any work: the pruner can have the objective every epoch, and the data's classes fill
    every split (ConfigError / DataError naming the key)."""
    check_services(config)  # every tracking server, database and S3 endpoint answers (ServiceError within 15 s)
    video = config.workload.kind in VIDEO_KINDS
    if config.search.pruner != "none":
        try:
            check_pruning_objective(config.search.objective, video)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if not video:  # clips are split by source when loaded (workloads.video.data.split names the keys)
        check_splits(config)


def settle(coordinator, record: SweepRecord, reason: str, status: str = "FAILED") -> None:
    """Settle the trials the study holds RUNNING while no trial of this sweep runs (a dead driver's, or
    a stopping driver's own): those whose MLflow run ended are told as it ended; the others are marked
    FAIL in the study and queued to run again, and their runs still RUNNING in MLflow get `status` with
    the reason as tag sslab.error. The study is settled first: a driver killed in between leaves
    the runs RUNNING, and the next run settles them the same way."""
    started = ray.get(coordinator.interrupted.remote(), timeout=120)
    outcomes = record.outcomes(started, record.config.search.objective) if started else {}
    ray.get(coordinator.recover.remote(outcomes), timeout=120)
    record.fail_stale_trials(reason, status=status)


def drive(config: SSLabConfig, coordinator, record: SweepRecord) -> None:
    """Ask, run and tell until n_trials COMPLETE/PRUNED trials (in total) or the time budget.

    A failed trial does not stop the sweep; but after as many failures in this run as n_trials, the
    driver stops asking (a config that always fails would otherwise loop forever). If the driver
    stops (an error, Ctrl-C, SIGTERM), the trials it runs are cancelled before it goes."""
    search = config.search
    deadline = time.time() + search.timeout_minutes * 60 if search.timeout_minutes else None
    base = config.model_dump(mode="json")
    pruning = {"coordinator": coordinator, "objective": search.objective} if search.pruner != "none" else None
    running: dict[ray.ObjectRef, int] = {}
    failures = 0
    try:
        while True:
            counts = ray.get(coordinator.counts.remote())
            done = sum(counts.get(state, 0) for state in DONE)
            budget_left = (search.n_trials is None or done + len(running) < search.n_trials) and (
                deadline is None or time.time() < deadline) and (search.n_trials is None or failures < search.n_trials)
            if budget_left and ray.get(coordinator.exhausted.remote()):
                budget_left = False  # a grid with every point run or running: wait for those, ask no more
                if not running:
                    print("sslab sweep: the grid is exhausted: every parameter set has run", flush=True)
            if budget_left and len(running) < search.max_concurrent_trials:
                number, params = ray.get(coordinator.ask.remote())  # a retry queued by settle() comes first
                trial_config = trial_settings(base, params, number, record)
                if trial_config is None:  # parameters the config refuses: a failed trial, not a failed sweep
                    failures += 1
                    ray.get(coordinator.tell.remote(number, None, "FAIL"))
                    continue
                running[train_trial.options(name=f"trial-{number}").remote(
                    trial_config, number, record.trial_tags(number), pruning and {**pruning, "trial": number})] = number
                print(f"sslab sweep: trial {number} started: {short(params)}", flush=True)
                continue
            if not running:
                if search.n_trials is not None and failures >= search.n_trials:
                    print(f"sslab sweep: stopped asking for trials after {failures} failed trials "
                          f"(see the sslab.error tags of their MLflow runs)", flush=True)
                return
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                number = running.pop(ref)
                value, state = outcome(ref, number, record, search.objective)
                failures += state == "FAIL"
                ray.get(coordinator.tell.remote(number, value, state))
                score = f" {search.objective} = {value:.4f}" if value is not None else ""
                counts = ray.get(coordinator.counts.remote())
                print(f"sslab sweep: trial {number} {state}{score} ({sum(counts.get(s, 0) for s in DONE)} of "
                      f"{search.n_trials or 'unbounded'} trials done)", flush=True)
    except BaseException:
        cancel(running)
        raise


def trial_settings(base: dict, params: dict, number: int, record: SweepRecord) -> SSLabConfig | None:
    """The trial's config, or None when its parameters make an invalid config (e.g. a batch size the
    workers do not divide): that trial gets a FAILED MLflow run whose sslab.error names the problem."""
    try:
        # trials run side by side: their progress bars would interleave; the driver reports each trial
        return SSLabConfig.model_validate({**apply_params(base, {**params, "train.progress": False}), "search": None})
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        record.invalid_trial(number, params, error)
        print(redact_text(f"sslab sweep: trial {number} {params}: invalid config: {error}"), flush=True)
        return None


@ray.remote(num_cpus=0, max_retries=0)
def train_trial(config: SSLabConfig, number: int, tags: dict, pruning: dict | None):
    """One trial's Ray Train run, owned by this task (its MLflow run ends FINISHED, KILLED if pruned, or
    FAILED with the error)."""
    return run_training(config, kind="trial", tags=tags, run_name=f"trial-{number}", pruning=pruning)


def short(params: dict) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value:.4g}" if isinstance(value, float) else f"{key.rsplit('.', 1)[-1]}={value}"
                     for key, value in params.items())


def outcome(ref: ray.ObjectRef, number: int, record: SweepRecord, objective: str) -> tuple[float | None, str]:
    """A trial's (objective value, Optuna state). A failed trial does not stop the sweep."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # run_training raised: its MLflow run is FAILED with the error
        cause = error.as_instanceof_cause()
        print(redact_text(f"sslab sweep: trial {number} failed: {str(cause).strip().splitlines()[-1][:500]}"), flush=True)
        return None, "FAIL"
    except ray.exceptions.RayError as error:  # its process died: the run may still say RUNNING
        record.fail_trial_runs(number, f"the trial's process died: {type(error).__name__}: {error}"[:4900])
        return None, "FAIL"
    if result.pruned:
        return None, "PRUNED"
    value = record.objective_value(result.run_id, objective)
    return (value, "COMPLETE") if value is not None else (None, "FAIL")


def cancel(running: dict) -> None:
    """End the trials still running (their task's process, and with it the Ray Train run it owns), and
    wait a little for them to be gone: nothing of theirs writes their record after this."""
    if not running:
        return
    for ref in running:
        try:
            ray.cancel(ref, force=True)
        except Exception:
            pass
    try:
        ray.wait(list(running), num_returns=len(running), timeout=30)
    except Exception:
        pass


def stop(error: BaseException, coordinator, record: SweepRecord) -> None:
    """The driver stops on an error or is stopped; its trials were cancelled: nothing is left RUNNING.

    The trials it was running: their MLflow runs KILLED (Ctrl-C, SIGTERM) or FAILED, with the reason as
    tag sslab.error; FAIL in the study, queued to run again on the next run; the parent run KILLED or
    FAILED with the error. Each step is tried even if one before failed."""
    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))  # Ctrl-C; SIGTERM (Ray's handler exits)
    what = type(error).__name__ + (f": {error}" if str(error) else "")
    reason = f"the sweep driver {'was stopped' if interrupted else 'failed'} while this trial ran ({what})"
    steps = (lambda: settle(coordinator, record, reason, status="KILLED" if interrupted else "FAILED"),
             lambda: record.fail(error),
             lambda: ray.kill(coordinator))
    for step in steps:
        try:
            step()
        except Exception as problem:  # keep going: the record should tell as much of the truth as it can
            print(redact_text(f"sslab sweep: while stopping: {type(problem).__name__}: {problem}"), flush=True)
