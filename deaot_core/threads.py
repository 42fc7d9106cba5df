"""How many CPU threads to compute with: the cores this process may use, less those other
processes keep busy, measured again as the work goes on.

Why: torch's intra-op pool (OpenMP) splits every operation evenly over its threads and waits for
the slowest. When another process holds one of two cores, the thread that shares that core makes
every operation wait for it, and two threads run several times slower than one (BENCHMARKS.md,
"Under contention"). The affinity mask and the cgroup quota bound the cores; ``/proc/stat``
(the busy time of those cores) minus this process's own CPU time tells how many of them other
processes use.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Iterator

import torch

__all__ = ["usable_cores", "CoreLoad", "ThreadGovernor"]

RECHECK_SECONDS = 0.5  # how often a governor measures the load again


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max`` or v1), None when unlimited."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by the cgroup CPU quota."""
    cpus = _affinity()
    count = len(cpus) if cpus else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _busy_and_total(cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` (all when None) since boot, from ``/proc/stat``."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        ticks = [int(x) for x in rest.split()]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        spent = sum(ticks[:8])  # guest time is already counted in user time
        busy, total = busy + spent - idle, total + spent
    return (busy, total) if total else None


class CoreLoad:
    """Cores of this process's affinity mask kept busy by *other* processes between two calls
    of :meth:`measure` (None where ``/proc`` is unavailable)."""

    def __init__(self) -> None:
        self._cpus = _affinity()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()

    def _sample(self) -> tuple[int, int, float] | None:
        ticks = _busy_and_total(self._cpus)
        return None if ticks is None else (*ticks, time.process_time())

    def measure(self) -> float | None:
        """Cores' worth of other processes' CPU use since the last call (or construction)."""
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        cores = len(self._cpus) if self._cpus else (os.cpu_count() or 1)
        elapsed = (now[1] - last[1]) / cores  # ticks per core
        if elapsed <= 0:
            return None
        ours = (now[2] - last[2]) * self._tick
        return max(0.0, (now[0] - last[0] - ours) / elapsed)


class ThreadGovernor:
    """torch's intra-op thread count for work done inside :meth:`use`.

    ``threads`` None (automatic): the usable cores (never more than torch's own setting when the
    governor was made, so ``torch.set_num_threads`` / ``OMP_NUM_THREADS`` still cap it) less the
    cores other processes keep busy, measured every ``RECHECK_SECONDS``; at least 1. A number:
    exactly that many. The previous setting is restored when each ``use`` ends.
    """

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
            raise ValueError(f"threads must be a whole number >= 1 or None (automatic), got {threads!r}")
        self.fixed = None if threads is None else int(threads)
        self.ceiling = min(usable_cores(), torch.get_num_threads())
        self._load = CoreLoad() if self.fixed is None and self.ceiling > 1 else None
        self._checked = time.monotonic()
        self._threads = self.fixed or self.ceiling

    @property
    def threads(self) -> int:
        """The thread count chosen now (measuring the load again when it is due)."""
        if self._load is not None and time.monotonic() - self._checked >= RECHECK_SECONDS:
            self._checked = time.monotonic()
            others = self._load.measure()
            if others is not None:
                # Round half up: a core other processes use half of the time is still worth a thread.
                self._threads = max(1, min(self.ceiling, int(math.floor(self.ceiling - others + 0.5))))
        return self._threads

    @contextlib.contextmanager
    def use(self) -> Iterator[int]:
        """Run the block with :attr:`threads` torch threads; yields the count."""
        threads, before = self.threads, torch.get_num_threads()
        if threads != before:
            torch.set_num_threads(threads)
        try:
            yield threads
        finally:
            if threads != before:
                torch.set_num_threads(before)
