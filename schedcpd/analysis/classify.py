"""Per-process figures over a window of samples, and the workload class of each.

Classes, checked in this order (the first that matches wins):

``churn``
    The process keeps forking short-lived children: CPU of reaped children
    >= 5 % of a core, or >= 1 new child per second seen by the sampler
    (a ``make -j`` tree, a shell loop, a CI runner).
``io-bound``
    The leader thread sat in uninterruptible sleep (D) in >= 25 % of the
    samples, or it moved >= 256 KiB/s through the block layer while using
    under half a core, or >= 32 KiB/s with >= 256 bytes per wakeup (a
    synchronous writer starved of CPU by other load still moves a 4 KiB
    block per few wakeups; an interactive task moves next to nothing).
    (D-state sampling alone misses synchronous I/O on a busy host: such a
    task spends its time runnable, waiting for a CPU after each completion,
    not in D.  Block-layer delay from TaskStats would be
    better but needs kernel.task_delayacct=1, which the daemon does not set.)
``cpu-bound``
    >= 0.5 cores of CPU over its life in the window, or it wants a CPU most
    of the time (found runnable in >= 70 % of samples, or CPU + run-queue
    wait >= 0.7) and runs >= 5 ms per voluntary switch (needs TaskStats): a
    hog squeezed by other load still counts.
``interactive``
    >= 20 wakeups per second (voluntary switches from TaskStats, else
    timeslices from schedstat) and <= 2 ms of CPU per wakeup: frequent
    short bursts, latency matters more than throughput.
``idle``
    < 0.5 % of a core and no children, no I/O.
``mixed``
    anything else (moderate CPU with few wakeups).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schedcpd.analysis.sampler import Sample

CLASSES = ("churn", "io-bound", "cpu-bound", "interactive", "idle", "mixed")

CHURN_CHILD_CPU = 0.05
CHURN_SPAWN_RATE = 1.0
IO_D_FRACTION = 0.25
IO_BYTES_RATE = 256 << 10
IO_BYTES_RATE_LOW = 32 << 10
IO_BYTES_PER_WAKEUP = 256
CPU_BOUND = 0.5
CPU_DEMAND = 0.7
CPU_RUNNABLE_FRACTION = 0.7
CPU_PER_VOLUNTARY = 0.005
INTERACTIVE_WAKEUPS = 20.0
INTERACTIVE_CPU_PER_WAKEUP = 0.002
IDLE_CPU = 0.005


@dataclass(slots=True)
class ProcWindow:
    """Sums of one process's :class:`~schedcpd.analysis.sampler.ProcDelta` over a window."""

    pid: int
    comm: str
    ppid: int
    pgrp: int
    threads: int
    cgroup: str | None
    state: str
    first_seen: float
    cpu_s: float = 0.0
    child_cpu_s: float = 0.0
    run_s: float = 0.0
    wait_s: float = 0.0
    slices: int = 0
    vcs: int = 0
    ivcs: int = 0
    ts_dt: float = 0.0  # seconds of samples that carried TaskStats switch counts
    io_bytes: int = 0
    io_write_bytes: int = 0
    blkio_s: float = 0.0
    spawned: int = 0
    d_samples: int = 0
    r_samples: int = 0
    samples: int = 0  # window samples since the process was first seen
    span_s: float = 0.0  # seconds of the window the process existed (as far as seen)
    sources: set[str] = field(default_factory=set)

    @property
    def cpu(self) -> float:
        """Own CPU in cores over its life in the window."""
        return self.cpu_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def child_cpu(self) -> float:
        """Reaped children's CPU in cores."""
        return self.child_cpu_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def wait(self) -> float:
        """Run-queue wait in seconds per second."""
        return self.wait_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def wakeups(self) -> float:
        """Wakeups per second: TaskStats voluntary switches, else schedstat timeslices."""
        if self.ts_dt > 0:
            return self.vcs / self.ts_dt
        return self.slices / self.span_s if self.span_s > 0 else 0.0

    @property
    def io_rate(self) -> float:
        """Block-layer bytes per second."""
        return self.io_bytes / self.span_s if self.span_s > 0 else 0.0

    @property
    def write_rate(self) -> float:
        """Block-layer bytes written per second (part of :attr:`io_rate`)."""
        return self.io_write_bytes / self.span_s if self.span_s > 0 else 0.0

    @property
    def blkio_wait(self) -> float:
        """Block-I/O delay in seconds per second (0 while delay accounting is off)."""
        return self.blkio_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def d_fraction(self) -> float:
        """Share of samples that found the leader thread in D state."""
        return self.d_samples / self.samples if self.samples else 0.0

    @property
    def r_fraction(self) -> float:
        """Share of samples that found the leader thread runnable (R)."""
        return self.r_samples / self.samples if self.samples else 0.0

    @property
    def spawn_rate(self) -> float:
        """New children seen per second."""
        return self.spawned / self.span_s if self.span_s > 0 else 0.0

    @property
    def total_cpu(self) -> float:
        """Own plus reaped children's CPU, in cores: the ranking key."""
        return self.cpu + self.child_cpu


def aggregate(samples: list[Sample]) -> dict[int, ProcWindow]:
    """Sum the per-process deltas of ``samples`` (oldest first) per pid."""
    out: dict[int, ProcWindow] = {}
    if not samples:
        return out
    start = samples[0].t - samples[0].dt
    end = samples[-1].t
    for s in samples:
        for pid, d in s.procs.items():
            w = out.get(pid)
            if w is None or w.first_seen != d.first_seen:  # new, or pid reused
                w = ProcWindow(pid=pid, comm=d.comm, ppid=d.ppid, pgrp=d.pgrp,
                               threads=d.threads, cgroup=d.cgroup, state=d.state,
                               first_seen=d.first_seen)
                out[pid] = w
            w.comm, w.ppid, w.pgrp, w.threads, w.state = d.comm, d.ppid, d.pgrp, d.threads, d.state
            w.cgroup = d.cgroup or w.cgroup
            w.cpu_s += d.cpu_s
            w.child_cpu_s += d.child_cpu_s
            w.run_s += d.run_s
            w.wait_s += d.wait_s
            w.slices += d.slices
            if d.vcs is not None:
                w.vcs += d.vcs
                w.ivcs += d.ivcs or 0
                w.ts_dt += s.dt
            w.io_bytes += d.io_bytes
            w.io_write_bytes += d.io_write_bytes
            w.blkio_s += d.blkio_s
            w.spawned += d.spawned
            w.d_samples += d.state == "D"
            w.r_samples += d.state == "R"
            w.sources.add(d.wait_source)
    for w in out.values():
        # A process first seen mid-window was born (or appeared) then; its
        # first sample's delta already covers the time since its birth.
        began = max(start, w.first_seen - _dt_at(samples, w.first_seen))
        w.span_s = max(end - began, samples[-1].dt)
        w.samples = sum(1 for s in samples if s.t >= w.first_seen) or 1
    return out


def _dt_at(samples: list[Sample], t: float) -> float:
    """The interval length of the first sample ending at or after ``t``."""
    for s in samples:
        if s.t >= t:
            return s.dt
    return 0.0


def classify(w: ProcWindow) -> str:
    """The workload class of one process; see the module docstring for the rules."""
    if w.child_cpu >= CHURN_CHILD_CPU or w.spawn_rate >= CHURN_SPAWN_RATE:
        return "churn"
    wake = w.wakeups
    io = w.io_rate
    if w.d_fraction >= IO_D_FRACTION or (io >= IO_BYTES_RATE and w.cpu < CPU_BOUND) or (
        io >= IO_BYTES_RATE_LOW and wake > 0 and io / wake >= IO_BYTES_PER_WAKEUP
    ):
        return "io-bound"
    if w.cpu >= CPU_BOUND:
        return "cpu-bound"
    wants_cpu = w.r_fraction >= CPU_RUNNABLE_FRACTION or w.cpu + w.wait >= CPU_DEMAND
    if w.ts_dt > 0 and wants_cpu and w.cpu >= 0.02 and (
        w.vcs == 0 or w.cpu_s / w.vcs >= CPU_PER_VOLUNTARY
    ):
        return "cpu-bound"
    if wake >= INTERACTIVE_WAKEUPS and w.span_s > 0 and (
        w.cpu_s / (wake * w.span_s) <= INTERACTIVE_CPU_PER_WAKEUP
    ):
        return "interactive"
    if w.total_cpu < IDLE_CPU and w.io_rate < 4096:
        return "idle"
    return "mixed"
