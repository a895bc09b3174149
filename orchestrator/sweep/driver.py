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

One driver per study: before it starts Ray or opens the study or MLflow, the driver takes a lease on
the study in the study's own database (driver_lock.py); a second driver of the study, on this machine
or any machine sharing that database, is refused at once (StudyBusyError, naming the first: host,
pid, since when); a dead driver's lease is taken over. On a cluster, the coordinator's named actor
refuses a second driver too. A driver that loses its lease stops its trials and leaves the rest alone.

Time bounds. A trial running longer than `search.trial_timeout_minutes` is stopped (its task
cancelled, which ends its Ray Train run): its MLflow run FAILED "timed out after N min", FAIL in the
study, and the sweep goes on. `search.timeout_minutes` bounds this run of the driver, from its start:
at the deadline no trial starts any more, the running ones are stopped, KILLED in MLflow with the
budget as the reason, FAIL in the study and queued for the next run, and the parent run ends FINISHED
with the best trial so far. The driver never waits without a bound: for trials, at most until the
nearest deadline or POLL_S; for the coordinator, at most CALL_TIMEOUT_S (coordinator.call).
"""
import time
from dataclasses import dataclass, field

import ray

from orchestrator.config.loader import ConfigError
from orchestrator.config.local_paths import with_absolute_paths
from orchestrator.config.schema import SSLabConfig
from orchestrator.config.search_checks import apply_params
from orchestrator.config.secrets import redact_text
from orchestrator.ray_runtime import cancel_unended, ensure_ray
from orchestrator.services import check_services
from orchestrator.sweep.coordinator import call, start_coordinator
from orchestrator.sweep.driver_lock import DriverLock
from orchestrator.sweep.record import SweepRecord
from orchestrator.training.run import run_training
from orchestrator.training.shared_data import share_once
from orchestrator.config.video_workload import VIDEO_KINDS
from orchestrator.training.trial_eval import check_pruning_objective, check_splits

DONE = ("COMPLETE", "PRUNED")
POLL_S = 5.0  # the longest the driver waits for trials without looking at its lease and deadlines
CANCEL_WAIT_S = 30  # how long a cancelled trial is waited for (its process ends within a second or two)


@dataclass
class SweepResult:
    parent_run_id: str
    study_name: str
    best: tuple[int, float, dict] | None
    counts: dict[str, int]
    tracking_uri: str  # absolute: the MLflow store the sweep wrote to
    best_test: dict[str, float] = field(default_factory=dict)  # the best trial's held-out test/ scores


def run_sweep(config: SSLabConfig) -> SweepResult:
    started = time.time()  # search.timeout_minutes counts from here
    config = with_absolute_paths(config)
    search = config.search
    study_name = search.study_name or config.name
    preflight(config)
    # a second driver of this study, on this machine or one sharing its database, stops here, at once
    with DriverLock(study_name, search.storage) as lock:
        if lock.took_over():
            print(f"sslab sweep: {lock.took_over()}", flush=True)
        ensure_ray(worker_logs=False)  # the driver prints one line per trial
        coordinator = start_coordinator(config, study_name)  # named: a second driver on this cluster stops here
        try:
            record = SweepRecord(config, study_name)
        except BaseException:
            ray.kill(coordinator)
            raise
        deadline = started + search.timeout_s if search.timeout_s else None
        try:
            settle(coordinator, record, "the sweep driver stopped while this trial ran")  # resume
            drive(config, coordinator, record, deadline, lock)
            best = call(coordinator, "best")
            best_test = record.finish(best, call(coordinator, "table"), coordinator)
            result = SweepResult(record.parent_run_id, study_name, best, call(coordinator, "counts"),
                                 config.tracking.uri, best_test)
        except BaseException as error:
            if lock.lost.is_set():  # another driver runs the study now: its record is not ours to settle
                ray.kill(coordinator)
                raise lock.lost_error() from error
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
    started = call(coordinator, "interrupted")
    outcomes = record.outcomes(started, record.config.search.objective) if started else {}
    call(coordinator, "recover", outcomes)
    record.fail_stale_trials(reason, status=status)


def drive(config: SSLabConfig, coordinator, record: SweepRecord, deadline: float | None = None,
          lock: DriverLock | None = None) -> None:
    """Ask, run and tell until n_trials COMPLETE/PRUNED trials (in total), the grid is exhausted or the
    time budget (`deadline`, epoch seconds) is spent.

    A failed trial does not stop the sweep; but after as many failures in this run as n_trials, the
    driver stops asking (a config that always fails would otherwise loop forever). A trial past
    search.trial_timeout_minutes is stopped and told FAIL; at the deadline the running trials are
    stopped and settled (KILLED, queued for the next run). If the driver stops (an error, Ctrl-C,
    SIGTERM, its lease lost), the trials it runs are cancelled before it goes."""
    search = config.search
    base = config.model_dump(mode="json")
    pruning = {"coordinator": coordinator, "objective": search.objective} if search.pruner != "none" else None
    limit = search.trial_timeout_minutes * 60 if search.trial_timeout_minutes else None
    running: dict[ray.ObjectRef, int] = {}
    started: dict[ray.ObjectRef, float] = {}  # when the driver started each trial
    asked: dict[ray.ObjectRef, dict] = {}  # each trial's parameters
    shared_data: dict = {}  # the decoded data in the object store, once per data key for every trial
    failures = 0

    def told(ref: ray.ObjectRef, state: str | None = None, note: str = "") -> None:
        """Tell the study how the trial of `ref` ended (as its result says, unless `state` is given)."""
        nonlocal failures
        number, value = running.pop(ref), None
        started.pop(ref, None)
        asked.pop(ref, None)
        if state is None:
            value, state = outcome(ref, number, record, search.objective)
        failures += state == "FAIL"
        call(coordinator, "tell", number, value, state)
        score = f" {search.objective} = {value:.4f}" if value is not None else ""
        done = sum(call(coordinator, "counts").get(s, 0) for s in DONE)
        print(f"sslab sweep: trial {number} {state}{score}{note} ({done} of {search.n_trials or 'unbounded'} "
              f"trials done)", flush=True)

    def time_out(ref: ray.ObjectRef) -> None:
        """Stop a trial past its time: FAILED 'timed out after N min' (unless it ended just now)."""
        if not ray.wait([ref], timeout=0)[0]:
            cancel_unended([ref])  # ends its process, and with it the Ray Train run it owns; ray.get below tells
            ray.wait([ref], timeout=CANCEL_WAIT_S)
            try:
                ray.get(ref, timeout=0)
            except Exception:  # cancelled: the run it leaves RUNNING is FAILED here, with the reason
                reason = f"timed out after {search.trial_timeout_minutes:g} min (search.trial_timeout_minutes)"
                record.fail_stopped_trial(running[ref], asked[ref], reason, started[ref])
                return told(ref, "FAIL", f": {reason}")
        told(ref)

    def out_of_time() -> None:
        """The time budget is spent: the running trials stopped, KILLED, FAIL and queued (settle)."""
        for ref in ray.wait(list(running), num_returns=len(running), timeout=0)[0]:
            told(ref)  # ended in time
        if not running:
            return
        stopped = {number: (asked[ref], started[ref]) for ref, number in running.items()}
        cancel(running)
        running.clear()
        started.clear()
        asked.clear()
        reason = (f"the sweep's time budget (search.timeout_minutes = {search.timeout_minutes:g}) ran out while "
                  f"this trial ran: stopped, queued for the next run")
        settle(coordinator, record, reason, status="KILLED")
        for number, (params, since) in stopped.items():  # one stopped before it opened its run: recorded too
            record.fail_stopped_trial(number, params, reason, since, status="KILLED")
        numbers = sorted(stopped)
        print(f"sslab sweep: the time budget (search.timeout_minutes = {search.timeout_minutes:g}) is spent: "
              f"trials {numbers} stopped (KILLED), queued for the next run", flush=True)

    try:
        while True:
            if lock is not None and lock.lost.is_set():
                raise lock.lost_error()
            if deadline is not None and time.time() >= deadline and running:
                out_of_time()
            if limit is not None:
                for ref in [ref for ref, start in started.items() if time.time() - start >= limit]:
                    time_out(ref)
            done = sum(call(coordinator, "counts").get(state, 0) for state in DONE)
            budget_left = (search.n_trials is None or done + len(running) < search.n_trials) and (
                deadline is None or time.time() < deadline) and (search.n_trials is None or failures < search.n_trials)
            if budget_left and call(coordinator, "exhausted"):
                budget_left = False  # a grid with every point run or running: wait for those, ask no more
                if not running:
                    print("sslab sweep: the grid is exhausted: every parameter set has run", flush=True)
            if budget_left and len(running) < search.max_concurrent_trials:
                number, params = call(coordinator, "ask")  # a retry queued by settle() comes first
                trial_config = trial_settings(base, params, number, record)
                if trial_config is None:  # parameters the config refuses: a failed trial, not a failed sweep
                    failures += 1
                    call(coordinator, "tell", number, None, "FAIL")
                    continue
                ref = train_trial.options(name=f"trial-{number}").remote(
                    trial_config, number, record.trial_tags(number), pruning and {**pruning, "trial": number},
                    [share_once(shared_data, trial_config)])
                running[ref], started[ref], asked[ref] = number, time.time(), params
                print(f"sslab sweep: trial {number} started: {short(params)}", flush=True)
                continue
            if not running:
                if search.n_trials is not None and failures >= search.n_trials:
                    print(f"sslab sweep: stopped asking for trials after {failures} failed trials "
                          f"(see the sslab.error tags of their MLflow runs)", flush=True)
                return
            # wait for a trial to end, but no longer than the nearest deadline or POLL_S (the lease)
            now = time.time()
            bounds = [POLL_S] + ([deadline - now] if deadline is not None else []) + \
                ([start + limit - now for start in started.values()] if limit is not None else [])
            finished, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, min(bounds)))
            for ref in finished:
                told(ref)
    except BaseException:
        numbers = list(running.values())
        cancel(running)
        if lock is not None and lock.lost.is_set():  # no settle (the study is another driver's): its own runs only
            for number in numbers:
                try:
                    record.fail_trial_runs(number, "the sweep driver lost its lease on the study while this trial ran")
                except Exception:  # noqa: BLE001 - the next driver's settle() fails it anyway
                    pass
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
def train_trial(config: SSLabConfig, number: int, tags: dict, pruning: dict | None, data=None):
    """One trial's Ray Train run, owned by this task (its MLflow run ends FINISHED, KILLED if pruned, or
    FAILED with the error). data: a list holding the sweep's decoded data (a ref nested in a list is
    passed as the ref, not resolved into this task)."""
    return run_training(config, kind="trial", tags=tags, run_name=f"trial-{number}", pruning=pruning,
                        data=data[0] if data else None)


def short(params: dict) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value:.4g}" if isinstance(value, float) else f"{key.rsplit('.', 1)[-1]}={value}"
                     for key, value in params.items())


def outcome(ref: ray.ObjectRef, number: int, record: SweepRecord, objective: str) -> tuple[float | None, str]:
    """A trial's (objective value, Optuna state). A failed trial does not stop the sweep; one whose loss or
    gradient norm became nan/inf is FAIL, or PRUNED with search.prune_non_finite (its run KILLED, tagged
    sslab.pruned=true, its sslab.error kept)."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # run_training raised: its MLflow run is FAILED with the error
        from workloads.errors import NonFiniteLossError

        if isinstance(error.cause, NonFiniteLossError):  # a nan/inf step: FAIL, or PRUNED (search.prune_non_finite)
            prune = record.config.search.prune_non_finite
            if prune and error.cause.run_id:
                record.tracker.prune(error.cause.run_id)  # FAILED -> KILLED, sslab.pruned=true; sslab.error stays
            print(f"sslab sweep: trial {number} {'pruned' if prune else 'failed'}: {error.cause}", flush=True)
            return None, "PRUNED" if prune else "FAIL"
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
    cancel_unended(running)
    try:
        ray.wait(list(running), num_returns=len(running), timeout=CANCEL_WAIT_S)
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
