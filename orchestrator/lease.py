"""A lease row in a SQL database (PostgreSQL, MySQL, SQLite): one holder of a name across hosts.

Its users: the pipeline lock (pipelines/lock.py) and the sweep driver's lease on its study
(orchestrator/sweep/driver_lock.py).

The holder renews its lease from a thread every third of its length; a holder that dies stops
renewing, and its row is taken over once it has expired. A holder on this host whose process is gone
is taken over at once (its pid proves it). Expiry is judged by the clocks of the hosts, which must
agree to well within a lease (NTP does).

The take-over is a conditional UPDATE (`WHERE token = <the expired holder's>`): of two hosts that
race for an expired lease, the database lets exactly one change the row.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid

import sqlalchemy as sa

TABLE = sa.Table(
    "sslab_leases", sa.MetaData(),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


class LeaseHeld(RuntimeError):
    """Another live holder has the lease."""

    def __init__(self, name: str, holder: dict, expires_in: float):
        self.name, self.holder, self.expires_in = name, holder, expires_in
        who = ", ".join(f"{key} {holder[key]}" for key in ("host", "pid", "run_key", "since") if key in holder)
        super().__init__(f"{name} is held by {who or 'an unknown holder'} (its lease runs {expires_in:.0f} s more "
                         f"unless renewed)")


def alive_here(holder: dict) -> bool:
    """False only for a holder on this host whose process is gone."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def describe(url: str) -> str:
    """The database's address without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message must not fail
        return "the lease database"


class Lease:
    def __init__(self, url: str, name: str, seconds: float = 60.0, **about):
        self.url, self.name, self.seconds = url, name, float(seconds)
        self.token = uuid.uuid4().hex
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), **about,
                       "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self.previous: dict | None = None  # the expired (or dead) holder this lease was taken from
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # SQLite: wait for another writer's lock (a study's actor shares the file) rather than fail at once
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        self._engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    def acquire(self) -> "Lease":
        """Take the lease or raise LeaseHeld; then renew it until release()."""
        self._create_table()
        with self._engine.begin() as db:
            row = db.execute(sa.select(TABLE).where(TABLE.c.name == self.name)).first()
            now = time.time()
            if row is None:
                try:
                    db.execute(TABLE.insert().values(**self._values(now)))
                except sa.exc.IntegrityError:  # another host inserted it first
                    db.rollback()
                    return self._held()
            else:
                holder = json.loads(row.holder)
                if row.expires_at > now and alive_here(holder):
                    raise LeaseHeld(self.name, holder, row.expires_at - now)
                changed = db.execute(TABLE.update().where(TABLE.c.name == self.name, TABLE.c.token == row.token)
                                     .values(**self._values(now))).rowcount
                if changed != 1:
                    return self._held()
                self.previous = holder
        self._thread = threading.Thread(target=self._renew_until_released, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return self

    def peek(self) -> tuple[dict, float] | None:
        """The current holder and the seconds its lease runs (negative: expired), or None when there is
        none (no row, or no table yet). Reads only: takes nothing, creates nothing."""
        with self._engine.connect() as db:
            row = db.execute(sa.select(TABLE).where(TABLE.c.name == self.name)).first()
        return (json.loads(row.holder), row.expires_at - time.time()) if row else None

    def _held(self):
        with self._engine.connect() as db:
            row = db.execute(sa.select(TABLE).where(TABLE.c.name == self.name)).first()
        holder = json.loads(row.holder) if row else {}
        raise LeaseHeld(self.name, holder, (row.expires_at - time.time()) if row else 0.0)

    def _values(self, now: float) -> dict:
        return {"name": self.name, "token": self.token, "holder": json.dumps(self.holder), "expires_at": now + self.seconds}

    def _create_table(self) -> None:
        try:
            TABLE.metadata.create_all(self._engine, checkfirst=True)
        except sa.exc.DBAPIError:  # created by another host between the check and the CREATE
            TABLE.metadata.create_all(self._engine, checkfirst=True)

    def renew(self) -> bool:
        """Extend the lease; False if it is no longer ours (it expired and was taken over)."""
        with self._engine.begin() as db:
            changed = db.execute(TABLE.update().where(TABLE.c.name == self.name, TABLE.c.token == self.token)
                                 .values(expires_at=time.time() + self.seconds)).rowcount
        return changed == 1

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    self.lost.set()
                    return
            except sa.exc.DBAPIError:  # the database is away for a moment: the next renewal retries
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
            try:
                with self._engine.begin() as db:
                    db.execute(TABLE.delete().where(TABLE.c.name == self.name, TABLE.c.token == self.token))
            except sa.exc.DBAPIError:  # unreachable: the lease expires by itself
                pass
        self._engine.dispose()

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
