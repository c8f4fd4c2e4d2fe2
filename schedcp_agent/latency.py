"""Latency-sensitive targets and the CPU-bound work beside them, from the run pattern.

The observation's first question, before any job shape: is there a task in
the scope that runs in short bursts, woken often -- a service answering
requests, a periodic probe, a ping-pong -- and CPU-bound work beside it?
Then the workload is a latency case, whatever short jobs run around it (a
load generator restarted in short runs, a benchmark loop): a short-job batch
or fork churn is what the profile says only when that is what the targets
are (:mod:`schedcp_agent.jobs`).

The evidence is each process's own scheduler statistics over the
observation (``/proc/PID/task/*/schedstat``: time run, time waited for a
CPU, times run; ``status``: voluntary and involuntary context switches),
summed per *unit*: a process that persisted is one unit;
processes that came and went are grouped by their command (and whether
they forked) under the persisting ancestor that started them (the driver),
so a load generator's runs count as one task, and ``perf bench sched pipe``'s
forking parent and its leaf partner stay apart.  A unit is

- **CPU-bound** when it used or wanted (run + wait) at least
  :data:`CPU_BOUND` cores and hardly ever gave up the CPU itself (under
  :data:`SLEEPS` of its switches voluntary: it always had work).  Burst
  length does not tell it on a busy host: a hog preempted by a probe waking
  1000 times a second ran 0.6-1.0 ms per turn (measured here);
- **latency-sensitive** when it did sleep (at least :data:`SLEEPS` of its
  switches voluntary: it waits for a request, a timer or a message), in
  short bursts (under :data:`BURST_MS` of CPU each time it got a CPU),
  at least :data:`MIN_WAKEUPS` times a second, and forked nothing (a driver
  or a build's make is woken by its children, not by requests).  Not "mostly
  voluntary": a request handler beside its load generator is preempted on
  the generator's every wake-up (nginx under wrk beside a hog: 46 %
  voluntary, 0.05 ms per run; t1_hog, sysbench, cc1, the query streams: 0-2 %).

Without the switch counts (a process gone before they were read) the burst
length decides: CPU-bound at :data:`LONG_BURST_MS` or more, latency-sensitive
under :data:`BURST_MS`.

Units seen for less than :data:`MIN_SECONDS` say nothing (a helper that
execs and exits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schedcp_agent.targets import ScopeTracker

BURST_MS = 0.6
MIN_WAKEUPS = 20.0
CPU_BOUND = 0.5
LONG_BURST_MS = 1.0
MIN_SECONDS = 0.5
SLEEPS = 0.25
"""Share of voluntary switches that tells a task that sleeps from one that always has work."""
WAITS = 0.001
"""Run-queue wait (s/s) above which a latency unit waited for a CPU."""


@dataclass
class Unit:
    """A persisting process, or the runs of one command under one driver."""

    comm: str
    root: int
    """The persisting process: the unit itself, or the driver of its runs."""
    pids: list[int] = field(default_factory=list)
    transient: bool = False
    seconds: float = 0.0
    run: float = 0.0
    wait: float = 0.0
    slices: int = 0
    voluntary: int = 0
    involuntary: int = 0
    switches: bool = True
    """Whether every process of the unit had its switch counts read."""
    forks: bool = False

    @property
    def cores(self) -> float:
        """CPU used per second of its life."""
        return self.run / max(self.seconds, 1e-9)

    @property
    def waits(self) -> float:
        """Run-queue wait per second of its life."""
        return self.wait / max(self.seconds, 1e-9)

    @property
    def burst_ms(self) -> float:
        """CPU per time it got a CPU, ms."""
        return self.run * 1e3 / max(self.slices, 1)

    @property
    def wakeups(self) -> float:
        """Times it got a CPU per second."""
        return self.slices / max(self.seconds, 1e-9)

    @property
    def sleeps(self) -> float | None:
        """Share of its switches that were voluntary (None: not read)."""
        total = self.voluntary + self.involuntary
        return self.voluntary / total if self.switches and total else None

    def kind(self) -> str:
        """``latency``, ``cpu-bound`` or ``other``."""
        if self.seconds < MIN_SECONDS:
            return "other"
        sleeps = self.sleeps
        busy = self.cores + self.waits >= CPU_BOUND
        if busy and (sleeps < SLEEPS if sleeps is not None else self.burst_ms >= LONG_BURST_MS):
            return "cpu-bound"
        if (not self.forks and (sleeps is None or sleeps >= SLEEPS)
                and self.burst_ms < BURST_MS and self.wakeups >= MIN_WAKEUPS):
            return "latency"
        return "other"

    def describe(self) -> str:
        """One line of evidence."""
        who = (f"{len(self.pids)} run(s) of {self.comm} under [{self.root}]" if self.transient
               else f"{self.comm}[{self.root}]")
        sleeps = "" if self.sleeps is None else f", {self.sleeps:.0%} of switches voluntary"
        return (f"{who}: {self.cores:.2f} cores, {self.wakeups:.0f} runs/s, "
                f"{self.burst_ms:.2f} ms per run{sleeps}, waited {self.waits:.3f} s/s for a "
                f"CPU: {self.kind()}")


def units(tracker: ScopeTracker) -> list[Unit]:
    """The scope's units over the observation (see the module doc)."""
    seen = list(tracker.seen.values())
    by_pid = {s.proc.pid: s.proc for s in seen}
    parents = {s.proc.ppid for s in seen}
    persisted = {p.pid for p in tracker.persisted()}
    out: dict[tuple[int, str, bool], Unit] = {}
    for s in seen:
        p = s.proc
        got = tracker.schedstat.get(p.pid)
        if got is None or got[2] <= got[0]:
            continue
        forks = p.pid in parents or p.child_ticks > 0
        if p.pid in persisted:
            key, root, transient = (p.pid, "", forks), p.pid, False
        else:
            node, root, guard = p.ppid, 0, 0
            while node in by_pid and guard < 64:
                if node in persisted:
                    root = node
                node, guard = by_pid[node].ppid, guard + 1
            if not root:
                continue
            key, transient = (root, p.comm, forks), True
        u = out.setdefault(key, Unit(p.comm, root, transient=transient))
        first, last = got[1], got[3]
        u.pids.append(p.pid)
        u.seconds += got[2] - got[0]
        u.run += max(0, last[0] - first[0]) / 1e9
        u.wait += max(0, last[1] - first[1]) / 1e9
        if len(first) > 2 and len(last) > 2:
            u.slices += max(0, last[2] - first[2])
        if len(first) > 4 and len(last) > 4:
            u.voluntary += max(0, last[3] - first[3])
            u.involuntary += max(0, last[4] - first[4])
        else:
            u.switches = False
        u.forks = forks
    return sorted(out.values(), key=lambda u: (u.root, u.comm))


@dataclass
class LatencyCase:
    """Latency-sensitive units and the CPU-bound units beside them in the scope."""

    latency: list[Unit]
    cpu_bound: list[Unit]

    @property
    def waited(self) -> bool:
        """Whether any latency unit waited for a CPU."""
        return any(u.waits >= WAITS for u in self.latency)


def latency_case(tracker: ScopeTracker) -> LatencyCase:
    """The scope's latency-sensitive and CPU-bound units (either list may be empty)."""
    got = units(tracker)
    return LatencyCase([u for u in got if u.kind() == "latency"],
                       [u for u in got if u.kind() == "cpu-bound"])
