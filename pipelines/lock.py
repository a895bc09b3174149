"""One run of a pipeline at a time (CronJob's concurrencyPolicy: Forbid), on one host and across hosts.

On this host: an exclusive flock on a lock file, with the holder written in it (host, pid, run key,
since). The kernel releases a flock when its holder dies, however it dies (SIGKILL included), so a
dead holder's lock is taken over at once by the next run, which notes whose it was.

Across hosts (cron on two machines, CI runners, Kubernetes pods that share no filesystem): a lease
row in a database both reach (orchestrator.lease), held for as long as the run and renewed by it. A
holder that died is taken over once its lease has expired (at once when it ran on this host).
"""
import datetime as dt
import fcntl
import json
import os
import socket

from orchestrator.lease import Lease, LeaseHeld, describe


class PipelineLocked(RuntimeError):
    """Another run of this pipeline holds the lock."""

    def __init__(self, path: str, holder: dict, more: str = ""):
        self.path, self.holder = path, holder
        who = ", ".join(f"{key} {holder[key]}" for key in ("host", "pid", "run_key", "since") if key in holder)
        super().__init__(f"pipeline {holder.get('pipeline', '?')!r} is running: the lock {path} is held by "
                         f"{who or 'a process that has not written its name yet'}{more}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PipelineLock:
    def __init__(self, path: str, pipeline: str, run_key: str, lease_url: str | None = None,
                 lease_seconds: float = 60.0):
        self.path, self.pipeline, self.run_key = path, pipeline, run_key
        self.fd: int | None = None
        self.previous: dict = {}  # a dead holder's record, when this run took its lock over
        self.lease = Lease(lease_url, f"pipeline:{pipeline}", lease_seconds, pipeline=pipeline, run_key=run_key) \
            if lease_url else None

    def acquire(self) -> "PipelineLock":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise PipelineLocked(self.path, holder) from None
        self.fd = fd
        self.previous = read_holder(fd)  # a holder that released its lock left the file empty
        holder = {"pipeline": self.pipeline, "host": socket.gethostname(), "pid": os.getpid(),
                  "run_key": self.run_key, "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        if self.lease is not None:
            try:
                self.lease.acquire()
            except LeaseHeld as error:
                self.release()
                raise PipelineLocked(f"the lease {error.name!r} in {describe(self.lease.url)}",
                                     error.holder | {"pipeline": self.pipeline},
                                     f" (its lease expires in {error.expires_in:.0f} s unless renewed)") from None
            if self.lease.previous:
                self.previous = self.lease.previous
        return self

    def took_over(self) -> str | None:
        """What the lock file said of a holder that died holding it, or None."""
        if not self.previous:
            return None
        pid = self.previous.get("pid")
        state = "dead" if self.previous.get("host") == socket.gethostname() and isinstance(pid, int) and not alive(pid) \
            else "gone"
        return (f"took over the lock of a {state} holder (host {self.previous.get('host')}, pid {pid}, "
                f"run key {self.previous.get('run_key')}, since {self.previous.get('since')})")

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # empty: released, not died
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "PipelineLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"unreadable": True}
