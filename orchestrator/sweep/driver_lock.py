"""One driver per study: a lease on the study, in the study's own database, held while the driver runs.

The coordinator's named actor (coordinator.py) refuses a second driver on the same Ray cluster only.
Two `sslab sweep` runs on one machine start a local Ray instance each, and drivers on other machines
may share the study's database; without this lease the second would settle the first's live trials
(mark them FAIL and queue them again). So before it opens the study or MLflow (and before it starts
Ray: a refusal comes at once), the driver takes the lease `sweep:<study key>` (orchestrator.lease):

- where the study's storage is a SQL database (a sqlite file or a server), in that database: every
  driver that can reach the study reaches its lease too, on this machine or any other;
- for journal:PATH storage, in a sqlite file beside the journal (PATH.lease.db);
- an in-memory study (sqlite:///:memory:) has no other driver: no lease.

A live holder refuses the others with StudyBusyError (the CLI's exit status 2), naming it (host, pid,
since when) and what to do. A holder that died is taken over: at once when its pid on this host is
gone (SIGKILL included), after its lease (LEASE_S) expired when it ran elsewhere. The lease is renewed
every LEASE_S / 3 and released when the driver ends, however it ends (an error, Ctrl-C, SIGTERM, which
is made a SystemExit while the lease is held). A driver that loses its lease (it could not renew it
for a whole lease, and another took it over) sees `lost` set, and stops.
"""
from __future__ import annotations

import json
import os
import signal
import threading

import sqlalchemy as sa

from orchestrator.config.loader import ConfigError
from orchestrator.config.local_paths import DEFAULT_STUDY_STORAGE, absolute_store_url, local_store_path
from orchestrator.lease import Lease, LeaseHeld, alive_here, describe
from orchestrator.sweep.coordinator import StudyBusyError, study_key

LEASE_S = 60.0  # a driver on another host that died is taken over after this; renewed every third


class LeaseLostError(StudyBusyError):
    """The driver's lease on its study was taken over by another driver: this one stops."""


def lease_url(storage: str) -> str | None:
    """The database that holds the study's lease: the study's own, a sqlite file beside a journal, or
    None for an in-memory study."""
    path = local_store_path(storage)
    if storage.startswith("journal:"):
        return "sqlite:///" + os.path.abspath(path) + ".lease.db"
    if path == ":memory:":
        return None
    return storage


def lease_name(study_name: str, storage: str) -> str:
    """The lease's name: the study's key (its name and a digest of its storage URL, never the URL)."""
    return "sweep:" + study_key(study_name, storage)


class DriverLock:
    def __init__(self, study_name: str, storage: str | None, seconds: float = LEASE_S):
        self.study_name = study_name
        self.storage = storage or DEFAULT_STUDY_STORAGE
        self.url = lease_url(self.storage)
        about = {"study": study_name, **({"submission": submission_id()} if submission_id() else {})}
        self.lease = Lease(self.url, lease_name(study_name, self.storage), seconds, **about) if self.url else None
        self.lost = self.lease.lost if self.lease else threading.Event()
        self._handler = None  # our SIGTERM handler, while it is installed

    def acquire(self) -> "DriverLock":
        """Take the study's lease, or raise StudyBusyError naming its holder."""
        if self.lease is None:
            return self
        path = local_store_path(self.url)
        if path is not None:  # sqlite: its folder, as make_storage would create it for the study
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            self.lease.acquire()
        except LeaseHeld as held:
            raise StudyBusyError(busy_message(self.study_name, held, describe(self.url))) from None
        except sa.exc.DBAPIError as error:  # the study's database: unreachable, refused, ...
            reason = str(getattr(error, "orig", error)).strip().splitlines()[0][:300]
            raise ConfigError(f"search.storage {describe(self.url)}: cannot take the study's driver lease there: "
                              f"{reason}") from None
        self._catch_sigterm()
        return self

    def check(self) -> None:
        """A quick look that takes and creates nothing: StudyBusyError if a live driver holds the lease.
        (acquire() is the refusal that counts; this one comes before a driver's slow imports.)"""
        if self.lease is None:
            return
        path = local_store_path(self.url)
        if path is not None and not os.path.exists(path):
            return
        try:
            found = self.lease.peek()
        except sa.exc.DBAPIError:  # no lease table yet, or the database is away: acquire() will tell
            return
        finally:
            self.lease._engine.dispose()
        if found is not None and found[1] > 0 and alive_here(found[0]):
            raise StudyBusyError(busy_message(self.study_name, LeaseHeld(self.lease.name, *found), describe(self.url)))

    def took_over(self) -> str | None:
        """A line on the dead driver whose lease this one took over, or None."""
        previous = self.lease.previous if self.lease else None
        if not previous:
            return None
        return (f"took over the study's lease from a driver that is gone (host {previous.get('host')}, "
                f"pid {previous.get('pid')}, since {previous.get('since')})")

    def lost_error(self) -> LeaseLostError:
        return LeaseLostError(f"this driver lost its lease on study {self.study_name!r} (it could not renew it "
                              f"for {self.lease.seconds:.0f} s, and another driver took it over): it stopped its "
                              f"trials and leaves the study and its MLflow record to that driver")

    def _catch_sigterm(self) -> None:
        """SIGTERM ends the driver as SystemExit (its finally blocks run: the lease is released, the
        record tells the truth), where nothing else (Ray's init does the same) has a handler yet."""
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def handler(signum, frame):
            raise SystemExit(128 + signum)

        self._handler = handler
        signal.signal(signal.SIGTERM, handler)

    def release(self) -> None:
        if self._handler is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is self._handler:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._handler = None
        if self.lease is not None:
            self.lease.release()

    def __enter__(self) -> "DriverLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_if_busy(config) -> None:
    """For the CLI, before it imports the driver (seconds of torch, Ray and MLflow): StudyBusyError at
    once if a live driver runs this config's study. Takes nothing; run_sweep takes the lease."""
    search = config.search
    DriverLock(search.study_name or config.name, absolute_store_url(search.storage or DEFAULT_STUDY_STORAGE)).check()


def submission_id() -> str | None:
    """The Ray job submission id when this driver runs as a submitted job (the job's metadata that Ray's
    job supervisor hands its driver), else None."""
    try:
        return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))["metadata"]["job_submission_id"]
    except (ValueError, KeyError, TypeError):
        return None


def busy_message(study_name: str, held: LeaseHeld, where: str) -> str:
    holder = held.holder
    host, pid, submission = holder.get("host", "an unknown host"), holder.get("pid", "?"), holder.get("submission")
    what = f"submission {submission}" if submission else "an sslab sweep process"
    how = f"`sslab stop {submission}`" if submission else f"Ctrl-C in its terminal, or `kill {pid}` on {host}"
    return (f"another driver runs study {study_name!r} ({what}): host {host}, pid {pid}, since "
            f"{holder.get('since', '?')} (its lease {held.name!r} in {where} runs {held.expires_in:.0f} s more "
            f"unless renewed). This driver stops without touching the study or MLflow. Wait for that driver to "
            f"end, or stop it ({how}), then run this again: it resumes the study. A driver that died is taken "
            f"over at once on the same host, or once its lease has expired from another")
