"""Is the host quiet?  Foreign CPU load = all busy CPU time minus our own processes'.

The machines this runs on are shared: other people's jobs come and go.  A
window measured beside a foreign burst compares the policy with that burst,
not with the workload's own neighbour.  Before each window (and over each
window) the runner measures:

- **foreign load**, in CPUs: busy time of every CPU from ``/proc/stat``
  (user, nice, system, irq, softirq, steal) minus the CPU time of *our*
  processes (the session's process trees, the daemon and bus started here,
  this process) from ``/proc/PID/stat`` (utime + stime + the children's
  cutime + cstime, so short jobs the session reaps are counted as ours),
  divided by the elapsed time;
- **PSI** ``some avg10`` of ``/proc/pressure/cpu`` (recorded, and gated only
  when a threshold is configured: the workload's own neighbour makes CPU
  pressure too, so pressure alone cannot tell foreign load from ours).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_HZ = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def busy_ticks() -> int:
    """Busy clock ticks of all CPUs together (the ``cpu`` line of /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    # user nice system idle iowait irq softirq steal (guest is inside user)
    vals = [int(v) for v in fields[1:9]]
    return vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + vals[7]


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime) of ``pid``, or None if gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])


def process_tree_ticks(roots: Iterable[int], single: int | None = None) -> dict[int, int]:
    """CPU ticks (own + reaped children) of every process under ``roots`` (inclusive).

    ``single`` is counted too, without its descendants.
    """
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    todo = [p for p in roots if p in stats]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out[pid] = stats[pid][1]
        todo.extend(children.get(pid, []))
    if single is not None and single in stats and single not in out:
        out[single] = stats[single][1]
    return out


def psi_some_avg10() -> float | None:
    """``some avg10`` of /proc/pressure/cpu (percent), or None without PSI."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return float(line.split()[1].split("=")[1])
    except OSError:
        return None
    return None


@dataclass
class LoadSample:
    """Foreign and own load over an interval."""

    seconds: float
    foreign_cpus: float
    own_cpus: float
    total_cpus: float
    psi_some_avg10: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class LoadMeter:
    """Measures foreign load between :meth:`start` and :meth:`stop`.

    ``own`` lists the roots of our process trees; this process itself is always
    ours (but not its other children: a process it starts is foreign unless
    listed).
    Ticks of a process of ours that started after :meth:`start` count whole
    (it started inside the interval); one that ended and was reaped by a
    process of ours is counted through its parent's ``cutime``.
    """

    def __init__(self, own: Iterable[int] = ()) -> None:
        self.own = set(own)
        self._t0 = 0.0
        self._busy0 = 0
        self._own0: dict[int, int] = {}

    def start(self) -> None:
        """Begin an interval."""
        self._own0 = process_tree_ticks(self.own, os.getpid())
        self._busy0 = busy_ticks()
        self._t0 = time.monotonic()

    def stop(self) -> LoadSample:
        """End the interval: the foreign load over it."""
        busy = busy_ticks()
        t1 = time.monotonic()
        own1 = process_tree_ticks(self.own, os.getpid())
        seconds = max(t1 - self._t0, 1e-6)
        own = sum(max(0, ticks - self._own0.get(pid, 0)) for pid, ticks in own1.items())
        total = (busy - self._busy0) / _HZ / seconds
        own_cpus = own / _HZ / seconds
        return LoadSample(seconds, max(0.0, total - own_cpus), own_cpus, total,
                          psi_some_avg10())


def measure(own: Iterable[int] = (), seconds: float = 0.75) -> LoadSample:
    """Foreign load over the next ``seconds``."""
    meter = LoadMeter(own)
    meter.start()
    time.sleep(seconds)
    return meter.stop()


@dataclass
class QuietPolicy:
    """When the host counts as quiet, and how long to wait for it."""

    max_foreign_cpus: float = 0.3
    max_psi_some: float | None = None
    sample_seconds: float = 0.5
    max_wait_seconds: float = 10.0
    """Longest wait for quiet before one window."""
    max_reruns: int = 1
    """Reruns of a window that was noisy."""
    budget_seconds: float = 120.0
    """Waiting and rerunning the whole run may spend on noise (then windows run as they come,
    their foreign load recorded): a busy shared host cannot stretch a run without bound."""
    spent: float = 0.0

    def noisy(self, sample: LoadSample) -> bool:
        """Whether ``sample`` is above a threshold."""
        if sample.foreign_cpus > self.max_foreign_cpus:
            return True
        return (self.max_psi_some is not None and sample.psi_some_avg10 is not None
                and sample.psi_some_avg10 > self.max_psi_some)


    def remaining(self) -> float:
        """Seconds of the run's noise budget left."""
        return max(0.0, self.budget_seconds - self.spent)


def wait_quiet(policy: QuietPolicy, own: Iterable[int]) -> tuple[LoadSample, float]:
    """Sample until quiet, ``max_wait_seconds`` pass or the run's budget is spent.

    Returns (last sample, seconds waited beyond the first sample); the wait is
    charged to ``policy.spent``.
    """
    own = list(own)
    limit = min(policy.max_wait_seconds, policy.remaining())
    start = time.monotonic()
    first = measure(own, policy.sample_seconds)
    sample, waited = first, 0.0
    while policy.noisy(sample) and time.monotonic() - start < limit:
        sample = measure(own, policy.sample_seconds)
        waited = time.monotonic() - start - first.seconds
    policy.spent += waited
    return sample, waited
