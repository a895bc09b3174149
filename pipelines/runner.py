"""`sslab pipeline run`: the steps of one run key, idempotent, locked and resumable.

With the pipeline's lock held: step runs of this key left RUNNING (a dead process's) are marked
FAILED; steps with a FINISHED run are skipped and their outputs read back from it; the others run in
order, each as a step run. A key whose steps all finished does no work and prints its outcome.
"""
import contextlib
import json
import sys
import time

from orchestrator.config.secrets import redact_text
from pipelines.lock import PipelineLock, PipelineLocked
from pipelines.plan import make_plan

DONE, FAILED, BAD_INPUT, LOCKED, NOT_PROMOTED = 0, 1, 2, 3, 4
EXIT_STATUSES = f"""exit status:
  {DONE}  done, or already done (this run key's steps had all finished)
  {FAILED}  a step failed (its MLflow run is FAILED with the error; run again to resume)
  {BAD_INPUT}  bad input: the pipeline file, the config or an override (nothing ran)
  {LOCKED}  locked: another run of this pipeline holds the lock (it says who); nothing ran
  {NOT_PROMOTED}  ran (or had run) to the end, but the candidate did not beat the champion"""


def say(message: str) -> None:
    print(f"sslab pipeline: {redact_text(message)}", file=sys.stderr, flush=True)  # errors may quote a URL


def run_pipeline(path: str, overrides: list[str] = (), run_key: str | None = None) -> int:
    plan = make_plan(path, overrides, run_key)  # ConfigError (exit 2) before any work
    lock = PipelineLock(plan.lock_path(), plan.spec.name, plan.run_key, plan.lease_url(), plan.spec.lease_seconds)
    try:
        lock.acquire()
    except PipelineLocked as error:
        say(str(error))
        return LOCKED
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the outcome only (MLflow prints run links)
            return run_locked(plan, lock, out)
    finally:
        lock.release()


def run_locked(plan, lock: PipelineLock, out) -> int:
    from pipelines.record import PipelineRecord
    from pipelines.steps import STEPS

    if lock.took_over():
        say(lock.took_over())
    record = PipelineRecord(plan)
    for step in record.settle_dead():
        say(f"step {step} of run key {plan.run_key} was left RUNNING by a dead process: marked FAILED, runs again")
    outputs, ran = {}, []
    for step in plan.spec.steps:
        if lock.lease is not None and lock.lease.lost.is_set():
            say(f"{plan.run_key}: the lease was lost (not renewed in {plan.spec.lease_seconds:.0f} s, then taken "
                f"over): stopping before step {step.step}; the holder resumes")
            return FAILED
        found = record.finished(step.step)
        if found is not None:
            outputs[step.step] = found
            continue
        say(f"{plan.run_key}: step {step.step} started")
        run_id, started = record.start(step.step), time.time()
        try:
            output, metrics = STEPS[step.step](plan, outputs, run_id)
        except BaseException as error:
            record.fail(run_id, error)
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            say(f"{plan.run_key}: step {step.step} failed: {type(error).__name__}: {error}")
            return FAILED
        record.finish(run_id, output, metrics)
        outputs[step.step] = output
        ran.append(step.step)
        say(f"{plan.run_key}: step {step.step} finished in {time.time() - started:.0f} s")
    return report(plan, outputs, ran, out)


def report(plan, outputs: dict, ran: list[str], out) -> int:
    """The outcome on stdout (JSON), the same whether the steps ran now or before."""
    promoted = outputs.get("promote", {}).get("promoted")
    outcome = {"pipeline": plan.spec.name, "run_key": plan.run_key,
               "status": "done" if ran else "already done", "ran": ran, "outputs": outputs}
    if not ran:
        say(f"{plan.run_key}: already done; nothing ran. Its recorded outcome:")
    print(json.dumps(outcome, indent=2, sort_keys=True), file=out, flush=True)
    if promoted is False:
        say(f"{plan.run_key}: version {outputs['promote']['version']} not promoted: {outputs['promote']['reason']}")
        return NOT_PROMOTED
    if promoted:
        say(f"{plan.run_key}: version {outputs['promote']['version']} of {plan.spec.model} is the champion")
    return DONE
