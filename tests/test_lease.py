"""The lease across hosts (orchestrator.lease), on SQLite and on the session's PostgreSQL: one holder,
a live holder refuses the others and names itself, an expired lease is taken over by exactly one of
many racing hosts, a dead holder on this host is taken over at once, a lost lease is noticed."""
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from orchestrator.lease import Lease, LeaseHeld


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/leases.db"
    return request.getfixturevalue("postgres_server").create_database(f"lease_{uuid.uuid4().hex[:8]}")


def test_a_live_holder_refuses_others_and_says_who_it_is(database):
    name = "pipeline:nightly"
    with Lease(database, name, 30, run_key="K1") as first:
        started = time.time()
        with pytest.raises(LeaseHeld) as refused:
            Lease(database, name, 30, host="other-host", run_key="K1").acquire()
        assert time.time() - started < 5
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "run_key K1" in message and "lease runs" in message
        assert refused.value.holder["host"] == first.holder["host"]
        with Lease(database, "pipeline:other", 30):  # another name is another lease
            pass
    with Lease(database, name, 30) as again:  # released: free, and nobody was taken over
        assert again.previous is None


@pytest.mark.slow  # waits out a lease (5-6 s)
def test_an_expired_lease_is_taken_over_and_its_holder_notices(database):
    name = "pipeline:nightly"
    gone = Lease(database, name, 3, host="host-a", run_key="K1").acquire()
    gone._stop.set()  # host-a stops renewing, as a dead host would (its row stays)
    gone._thread.join()
    with pytest.raises(LeaseHeld):
        Lease(database, name, 3, host="host-b").acquire()
    time.sleep(3.2)
    taker = Lease(database, name, 3, host="host-b").acquire()
    try:
        assert taker.previous["host"] == "host-a" and taker.previous["run_key"] == "K1"
        assert gone.renew() is False  # host-a, back, finds its lease is no longer its
        time.sleep(2.5)  # more than host-b's own lease: its renewals keep it
        with pytest.raises(LeaseHeld) as refused:
            Lease(database, name, 3, host="host-c").acquire()
        assert refused.value.holder["host"] == "host-b"
    finally:
        taker.release()
        gone._thread = None
        gone.release()


def test_of_many_hosts_racing_for_an_expired_lease_exactly_one_wins(database):
    name = "pipeline:race"
    stale = Lease(database, name, 3, host="dead-host").acquire()
    stale._stop.set()
    stale._thread.join()
    time.sleep(3.2)
    racers = [Lease(database, name, 30, host=f"host-{i}") for i in range(6)]
    won, refused = [], []
    barrier = threading.Barrier(len(racers))

    def race(lease):
        barrier.wait()
        try:
            won.append(lease.acquire())
        except LeaseHeld as error:
            refused.append(error)

    threads = [threading.Thread(target=race, args=(lease,)) for lease in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(won) == 1 and len(refused) == len(racers) - 1, (won, refused)
        assert all(error.holder["host"] == won[0].holder["host"] for error in refused)
        assert won[0].previous["host"] == "dead-host"
    finally:
        for lease in won:
            lease.release()


HOLDER = """
import sys, time
from orchestrator.lease import Lease
Lease(sys.argv[1], "pipeline:killed", 600, run_key="K9").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_holder_killed_on_this_host_is_taken_over_at_once(database):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, database], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld):  # alive: its 600 s lease holds
            Lease(database, "pipeline:killed", 600).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        started = time.time()
        with Lease(database, "pipeline:killed", 600) as taker:  # its pid is gone: no need to wait 600 s
            assert taker.previous["pid"] == holder.pid and taker.previous["run_key"] == "K9"
        assert time.time() - started < 5
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
