"""Thread counts that follow the cores other processes leave free.

PyTorch's CPU kernels (OpenMP) and numba's parallel loops split each operation across a team of threads and
wait at its end for the slowest one. When another process keeps a core busy, the thread the scheduler puts on
that core runs only part of the time, and every one of the thousands of small operations in a training step
waits for it: `fewview fit` ran 6.3x slower beside one busy loop with 2 threads on 2 cores, where losing a core
should cost 2x. :class:`ThreadGovernor` reads the machine's busy time and this process's own CPU time from
``/proc`` every few seconds and sets the thread count to the cores the others leave free (at least one, at most
the count the process started with). ``FEWVIEW_ADAPT_THREADS=0`` turns it off; elsewhere than Linux it does
nothing.
"""

from __future__ import annotations

import os
import time

import torch


def _machine_busy_and_own() -> tuple[float, float] | None:
    """(busy seconds of all CPUs, CPU seconds of this process) since boot, from /proc; None if unavailable."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / hz, (int(own[11]) + int(own[12])) / hz  # utime, stime


def set_threads(n: int) -> None:
    """``n`` threads for torch and, when this process uses it, numba. numba first: starting or resizing its
    OpenMP pool resets the thread count of the OpenMP runtime torch shares."""
    import sys

    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)


class ThreadGovernor:
    """Call :meth:`update` often (it samples at most every ``every`` seconds); it keeps torch's and numba's thread
    counts at ``clamp(floor(cores - others + slack), 1, maximum)``, where ``others`` is the CPU the other
    processes used over the last interval."""

    def __init__(self, every: float = 2.0, slack: float = 0.25, enabled: bool | None = None):
        if enabled is None:
            enabled = os.environ.get("FEWVIEW_ADAPT_THREADS", "1") != "0"
        self.maximum = torch.get_num_threads()
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.every, self.slack = every, slack
        self.last = _machine_busy_and_own() if enabled else None
        self.t = time.monotonic()
        self.threads = self.maximum
        self.others = 0.0

    @property
    def enabled(self) -> bool:
        return self.last is not None and self.maximum > 1

    def target(self, others: float) -> int:
        return int(max(1, min(self.maximum, (self.cores - others + self.slack) // 1)))

    def update(self) -> int:
        """The thread count in force (changed when the free cores changed)."""
        if not self.enabled or time.monotonic() - self.t < self.every:
            return self.threads
        now = _machine_busy_and_own()
        t = time.monotonic()
        if now is None:
            return self.threads
        dt = t - self.t
        (busy0, own0), (busy1, own1) = self.last, now
        self.others = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(dt, 1e-6)
        self.last, self.t = now, t
        n = self.target(self.others)
        if n != self.threads:
            set_threads(n)
            self.threads = n
        return n

    def restore(self) -> None:
        """Give back the thread count the process started with."""
        if self.threads != self.maximum:
            set_threads(self.maximum)
            self.threads = self.maximum
