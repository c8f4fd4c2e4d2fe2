"""The circuit breaker: guard metrics of a deployment's targets, and when to trip.

Guards are sampled from procfs for the deployment's target processes (all
their threads) at ``rate_hz`` (default 10 Hz):

- ``wait_per_run_us`` per group: run-queue wait per scheduling
  (Δ ``/proc/<pid>/task/<tid>/schedstat`` field 2 / Δ field 3), the
  scheduling latency the group sees;
- ``cpu_share`` per group: CPU time per wall second (Δ field 1);
- ``runnable`` per group: threads in state R, for stall detection;
- ``voluntary``/``involuntary`` per group: context switches where a thread
  blocked, or was preempted (Δ ``voluntary_ctxt_switches`` and
  ``nonvoluntary_ctxt_switches`` of ``/proc/<pid>/task/<tid>/status``).

Each group gets guards by what it did in the baseline and what the policy
does to it (:func:`classify`):

- ``latency`` — a group that runs in short bursts and then blocks (wakers,
  servers, UIs) must not see its run-queue wait per run regress, whatever
  the policy does to it: a latency probe put at SCHED_IDLE beside hogs trips
  here. A group is bursty when most of its baseline context switches are
  voluntary: that holds however busy the host is, whereas a CPU hog on a
  contended host gets a small CPU share too but is only ever preempted. A
  group that switched too rarely to tell (a hog alone on its CPU) is bursty
  when it used under ``interactive_share`` of a CPU per thread;
- ``throughput`` — a CPU-bound group the policy does not deprioritise must
  keep at least ``throughput_floor`` of its baseline CPU;
- ``donor`` — a CPU-bound group the policy deprioritises (SCHED_IDLE/BATCH,
  positive nice, cpu.idle, low shares, quota) waits and yields by design:
  only a stall trips it;
- ``progress`` — only a stall trips it: the targets of a sched_ext
  partial-switch canary, which run below every fair-class task;

and no group may stall (runnable threads with no CPU for ``stall_seconds``).

A regression trips only with a statistical margin, never on one sample:
at least ``min_samples`` samples in the window, the window's median beyond
``threshold`` x the baseline median (plus an absolute floor), and at least
``agreement`` of the window's samples beyond the baseline's p90.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
# Fewer baseline context switches than this say nothing about how a group runs.
MIN_SWITCHES = 20


@dataclass
class BreakerSettings:
    """Thresholds; ``[deployer]`` in schedcpd.toml sets them."""

    rate_hz: float = 10.0
    threshold: float = 2.0
    absolute_floor_us: float = 200.0
    agreement: float = 0.7
    min_samples: int = 8
    window: int = 15
    throughput_floor: float = 0.5
    interactive_share: float = 0.6
    stall_seconds: float = 2.0


@dataclass
class Trip:
    """Why the breaker tripped: the guard and the measured regression."""

    guard: str
    group: str
    baseline: float
    observed: float
    detail: str

    @property
    def ratio(self) -> float:
        """observed / baseline (inf when the baseline was 0)."""
        return self.observed / self.baseline if self.baseline else float("inf")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        ratio = self.ratio
        return {"guard": self.guard, "group": self.group, "baseline": round(self.baseline, 3),
                "observed": round(self.observed, 3),
                "ratio": round(ratio, 3) if math.isfinite(ratio) else None,
                "detail": self.detail}


@dataclass
class _TaskSample:
    cpu_ns: int
    wait_ns: int
    runs: int
    running: bool
    voluntary: int
    involuntary: int


def _read(path: str) -> bytes:
    # os.open/os.read, not pathlib: this runs for every target thread at
    # rate_hz, and pathlib's read_text cost three times as much per file.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 4096)]
        while len(chunks[-1]) == 4096:  # status outgrows a page on big hosts
            chunks.append(os.read(fd, 4096))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _field(status: bytes, key: bytes) -> bytes:
    """The value of ``key`` in ``/proc/.../status`` (``key:\tvalue\n``)."""
    at = status.find(b"\n" + key + b":")
    if at < 0:
        raise ValueError(f"no {key!r} in status")
    start = at + len(key) + 2
    end = status.find(b"\n", start)
    return status[start:end if end >= 0 else None].strip()


def _read_task(pid: int, tid: int) -> _TaskSample | None:
    """One thread's counters: two reads (``schedstat``, and ``status`` for state and switches).

    The sampler runs in the daemon beside the tasks it guards, at rate_hz; on
    a 2-CPU host its bursts showed up in a protected task's wake-up p99.
    """
    base = f"{PROC}/{pid}/task/{tid}/"
    try:
        cpu, wait, runs = map(int, _read(base + "schedstat").split())
        status = _read(base + "status")
        state = _field(status, b"State")[:1]
        voluntary = int(_field(status, b"voluntary_ctxt_switches"))
        involuntary = int(_field(status, b"nonvoluntary_ctxt_switches"))
    except (OSError, ValueError):
        return None
    return _TaskSample(cpu, wait, runs, state == b"R", voluntary, involuntary)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"{PROC}/{pid}/task") if t.isdigit()]
    except OSError:
        return []


@dataclass
class GroupSample:
    """One sample of one group's guard metrics (deltas since the previous)."""

    time: float
    wait_per_run_us: float | None
    cpu_share: float
    runnable: int
    threads: int
    voluntary: int = 0
    involuntary: int = 0


@dataclass
class GuardSampler:
    """Sample per-group guard metrics for a fixed set of target processes."""

    groups: dict[str, list[int]]
    _last: dict[tuple[int, int], _TaskSample] = field(default_factory=dict)
    _last_time: float = 0.0

    def sample(self) -> dict[str, GroupSample]:
        """Deltas since the previous call (the first call only primes)."""
        now = time.monotonic()
        current: dict[tuple[int, int], _TaskSample] = {}
        out: dict[str, GroupSample] = {}
        for group, pids in self.groups.items():
            d_cpu = d_wait = d_runs = d_vol = d_invol = runnable = threads = 0
            for pid in pids:
                for tid in _threads(pid):
                    s = _read_task(pid, tid)
                    if s is None:
                        continue
                    threads += 1
                    current[(pid, tid)] = s
                    runnable += s.running
                    prev = self._last.get((pid, tid))
                    if prev is not None:
                        d_cpu += s.cpu_ns - prev.cpu_ns
                        d_wait += s.wait_ns - prev.wait_ns
                        d_runs += s.runs - prev.runs
                        d_vol += s.voluntary - prev.voluntary
                        d_invol += s.involuntary - prev.involuntary
            if self._last_time and threads:  # a group with no live process has no sample
                dt = max(now - self._last_time, 1e-6)
                if d_runs:
                    wait_us: float | None = d_wait / d_runs / 1000
                elif runnable:
                    # schedstat books a wait only when the task finally runs: a
                    # runnable thread that never ran this period waited >= dt.
                    wait_us = dt * 1e6
                else:
                    wait_us = None
                out[group] = GroupSample(now, wait_us, d_cpu / dt / 1e9, runnable, threads,
                                         d_vol, d_invol)
        self._last, self._last_time = current, now
        return out

    def alive(self) -> bool:
        """Whether any target process still exists."""
        return any((PROC / str(p)).exists() for pids in self.groups.values() for p in pids)


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Breaker:
    """Decide, from a baseline and a window of samples, whether to trip."""

    def __init__(self, roles: dict[str, str], settings: BreakerSettings | None = None,
                 limits: dict[str, float] | None = None) -> None:
        self.roles = roles  # group -> "latency" | "throughput" | "donor" | "progress"
        self.settings = settings or BreakerSettings()
        # group -> the policy's own ratio (latency threshold or throughput floor)
        self.limits = limits or {}

    def evaluate(self, baseline: list[dict[str, GroupSample]],
                 window: list[dict[str, GroupSample]]) -> Trip | None:
        """A :class:`Trip` if a guard regressed beyond its margin, else None."""
        s = self.settings
        recent = window[-s.window:]
        if len(recent) < s.min_samples:
            return None
        for group, role in self.roles.items():
            base = [x[group] for x in baseline if group in x]
            now = [x[group] for x in recent if group in x]
            if len(now) < s.min_samples or len(base) < s.min_samples:
                continue
            # A stall is judged over the last stall_seconds, which can be longer
            # than the judged window (15 samples at 10 Hz are 1.5 s < 2 s).
            trip = self._stall(group, [x[group] for x in window if group in x])
            if trip is None and role == "latency":
                trip = self._latency(group, base, now)
            elif trip is None and role == "throughput":
                trip = self._throughput(group, base, now)
            if trip:
                return trip
        return None

    def _stall(self, group: str, samples: list[GroupSample]) -> Trip | None:
        """Runnable threads and (almost) no CPU in every sample of the last stall_seconds."""
        last = samples[-1].time if samples else 0.0
        for x in reversed(samples):
            span = last - x.time  # covered by the samples after x (each is a delta)
            if span >= self.settings.stall_seconds:
                return Trip("stall", group, 0.0, span,
                            f"group {group!r} had runnable threads but no CPU for {span:.1f} s")
            if not (x.runnable > 0 and x.cpu_share < 0.001):
                return None
        return None

    def _latency(self, group: str, base: list[GroupSample],
                 now: list[GroupSample]) -> Trip | None:
        s = self.settings
        b = [x.wait_per_run_us for x in base if x.wait_per_run_us is not None]
        w = [x.wait_per_run_us for x in now if x.wait_per_run_us is not None]
        if len(b) < s.min_samples or len(w) < s.min_samples:
            return None
        b_med, w_med, b_p90 = statistics.median(b), statistics.median(w), _p(b, 0.9)
        beyond = sum(v > b_p90 for v in w) / len(w)
        threshold = self.limits.get(group, s.threshold)
        if w_med > max(threshold * b_med, b_med + s.absolute_floor_us) \
                and beyond >= s.agreement:
            return Trip("wait_per_run_us", group, b_med, w_med,
                        f"run-queue wait per run of {group!r}: median {b_med:.0f} -> "
                        f"{w_med:.0f} us; {beyond:.0%} of samples above the baseline p90")
        return None

    def _throughput(self, group: str, base: list[GroupSample],
                    now: list[GroupSample]) -> Trip | None:
        s = self.settings
        floor = self.limits.get(group, s.throughput_floor)
        b_med = statistics.median(x.cpu_share for x in base)
        w = [x.cpu_share for x in now]
        w_med = statistics.median(w)
        below = sum(v < floor * b_med for v in w) / len(w)
        if b_med > 0.02 and w_med < floor * b_med and below >= s.agreement:
            return Trip("cpu_share", group, b_med, w_med,
                        f"CPU share of {group!r}: median {b_med:.2f} -> {w_med:.3f} CPUs "
                        f"(below {floor:.0%} of its baseline)")
        return None


def guard_figures(roles: dict[str, str], baseline: list[dict[str, GroupSample]],
                  window: list[dict[str, GroupSample]]) -> dict[str, Any]:
    """Per group: its guard role and the guard metrics before and during probation.

    Medians (and the p90 of run-queue wait per run) over the baseline and
    over the probation window: the measured outcome of a deployment that
    went active, kept in the policy's history.
    """

    def figures(samples: list[GroupSample]) -> dict[str, Any]:
        waits = [x.wait_per_run_us for x in samples if x.wait_per_run_us is not None]
        return {"samples": len(samples),
                "wait_per_run_us_median": round(statistics.median(waits), 1) if waits else None,
                "wait_per_run_us_p90": round(_p(waits, 0.9), 1) if waits else None,
                "cpu_share_median": round(statistics.median(x.cpu_share for x in samples), 4)
                if samples else None}

    out: dict[str, Any] = {}
    for group, role in roles.items():
        out[group] = {"role": role,
                      "baseline": figures([x[group] for x in baseline if group in x]),
                      "probation": figures([x[group] for x in window if group in x])}
    return out


def policy_guards(doc: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """The policy's own ``[[guard]]`` tables: group -> role, group -> ratio."""
    roles: dict[str, str] = {}
    limits: dict[str, float] = {}
    for guard in doc.get("guard", []):
        if guard.get("metric") == "wait_per_run_us":
            roles[guard["group"]], limits[guard["group"]] = "latency", guard["max_ratio"]
        elif guard.get("metric") == "cpu_share":
            roles[guard["group"]], limits[guard["group"]] = "throughput", guard["min_ratio"]
    return roles, limits


def classify(baseline: list[dict[str, GroupSample]], knob_roles: dict[str, str],
             settings: BreakerSettings) -> dict[str, str]:
    """Each group's guard role from its baseline behaviour and the policy's knobs."""
    roles = {}
    for group, knob_role in knob_roles.items():
        samples = [x[group] for x in baseline if group in x]
        voluntary = sum(x.voluntary for x in samples)
        switches = voluntary + sum(x.involuntary for x in samples)
        if switches >= MIN_SWITCHES:
            interactive = voluntary / switches >= 0.5
        else:
            per_thread = [x.cpu_share / x.threads for x in samples if x.threads]
            interactive = bool(per_thread) and statistics.median(per_thread) < \
                settings.interactive_share
        roles[group] = "latency" if interactive else (
            "donor" if knob_role == "donor" else "throughput")
    return roles


def role_of(group: dict[str, Any]) -> str:
    """``donor`` for a group the policy deprioritises, else ``beneficiary``."""
    task, cg = group.get("task", {}), group.get("cgroup", {})
    if task.get("policy") in ("idle", "batch") or task.get("nice", 0) > 0:
        return "donor"
    if cg.get("idle") is True or (isinstance(cg.get("shares"), int) and cg["shares"] < 1024):
        return "donor"
    if "quota_us" in cg:
        return "donor"
    return "beneficiary"
