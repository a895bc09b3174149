"""A nan/inf step in a Ray Train worker (workloads.training.finite): reported, not raised.

Every rank stops at the same step (the guard sees to it), reports {"sslab.non_finite": message} and
returns; run_training then fails the run with the message (tag sslab.error) and raises
NonFiniteLossError. Reported rather than raised because Ray Train would restart a raising worker
group from its last checkpoint (train.max_failures), only to diverge again, and would wrap the message
in its own traceback.
"""
import os
import tempfile

import ray.exceptions
import ray.train
import torch.distributed as dist

from orchestrator.training.state import report, report_checkpoint
from workloads.errors import DataError, NonFiniteLossError

KEY = "sslab.non_finite"


def report_non_finite(error: NonFiniteLossError, epoch: int, world: int, step_losses: list) -> None:
    """Every rank calls this at the same step: the message of a rank whose loss itself became
    non-finite is preferred over the others' "gradient norm became ..."."""
    message = str(error)
    if world > 1 and dist.is_available() and dist.is_initialized():
        messages = [None] * world
        dist.all_gather_object(messages, message)
        message = next((m for m in messages if m.startswith("loss ")), message)
    metrics = {"epoch": epoch, KEY: message}
    if step_losses:  # the steps logged before it (train.log_step_loss_every): what led there
        metrics["sslab.step_losses"] = step_losses
    if ray.train.get_context().get_world_rank():
        report(metrics)
        return
    # Ray Train's Result.metrics are those of the last report with a checkpoint: rank 0 attaches one
    # that holds only the message (no train state: nothing resumes from it)
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "non_finite.txt"), "w") as handle:
            handle.write(message)
        report_checkpoint(metrics, folder, "the message of a non-finite step")


def non_finite_error(metrics: dict) -> NonFiniteLossError | None:
    """The run's NonFiniteLossError, from the last report of its workers (None: it stayed finite)."""
    message = metrics.get(KEY)
    return NonFiniteLossError(str(message)) if message else None


READABLE = (NonFiniteLossError, DataError)


def readable_error(error: BaseException) -> BaseException:
    """The error to record and raise: a worker's NonFiniteLossError or DataError unwrapped from Ray
    Train's WorkerGroupError (whose message is the whole traceback) or from an in-process run's task
    error, else the error itself."""
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, READABLE):
        return type(error.cause)(*error.cause.args)
    if isinstance(error, ray.train.WorkerGroupError):
        for failure in error.worker_failures.values():
            for found in (failure, getattr(failure, "cause", None), failure.__cause__):
                if isinstance(found, READABLE):
                    return type(found)(*found.args)  # a fresh copy: its str is the message alone
    return error
