"""Where a trial's time and memory go (bench/trial_overhead.py, bench/data_per_node.py).

With SSLAB_TIMELINE naming a file (set before Ray starts, so every Ray process inherits it), each
mark appends one JSON line {"phase", "t", "pid", ...}; without it a mark costs one getenv. Marks from
the driver, the trial task and the Ray Train workers share the file: one machine, one clock.
"""
import json
import os
import threading
import time

ENV = "SSLAB_TIMELINE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark(phase: str, **extra) -> None:
    path = os.environ.get(ENV)
    if path:
        line = json.dumps({"phase": phase, "t": time.time(), "pid": os.getpid(), **extra})
        with open(path, "a") as handle:  # one short append per line: lines of several processes do not mix
            handle.write(line + "\n")


def process_started(pid: int | str = "self") -> float:
    """When this process (or `pid`) started (epoch seconds), from /proc: the worker's start before any of our code ran."""
    with open(f"/proc/{pid}/stat") as handle:
        ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


class MemoryPeaks:
    """This process's peak private memory (RssAnon: its heap and tensors) and its shared memory
    (RssShmem: pages of Ray's object store it reads), sampled every 50 ms. RSS alone also counts the
    libraries' file pages (RssFile, shared through the page cache) and a shared page in every process
    that maps it; the private sum plus one shared copy is what the machine holds for the data."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __init__(self):
        self.peak = {name: 0 for name in self.FIELDS + ("private",)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        with open("/proc/self/status") as handle:
            values = {key: int(rest.split()[0]) * 1024 for key, _, rest in (line.partition(":") for line in handle)
                      if key in self.FIELDS}
        values["private"] = values["RssAnon"]
        for name, value in values.items():
            self.peak[name] = max(self.peak[name], value)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def so_far(self) -> dict[str, int]:
        self.sample()
        return {f"peak_{name}": value for name, value in self.peak.items()}

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.so_far()


def first_call(on_step, phase: str, **extra):
    """The loop's on_step (or None), marking `phase` at its first call: the end of the first step."""
    marked = []

    def step(index, loss) -> None:
        if not marked:
            marked.append(True)
            mark(phase, **extra)
        if on_step is not None:
            on_step(index, loss)

    return step
