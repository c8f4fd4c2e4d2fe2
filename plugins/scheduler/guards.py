"""The scheduler's guards: CPU metrics of a deployment's targets, and each group's role.

The deployer's circuit breaker (:mod:`schedcpd.breaker`) judges; this module
measures, for hook ``schedcp_guards``.  Sampled from procfs for the
targets' threads at the breaker's ``rate_hz``:

- latency ``wait_per_run_us`` per group: run-queue wait per scheduling
  (Δ ``/proc/<pid>/task/<tid>/schedstat`` field 2 / Δ field 3), the
  scheduling latency the group sees;
- throughput ``cpu_share`` per group: CPU time per wall second (Δ field 1);
- pending: threads in state R, for stall detection;
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
  positive nice, cpu.idle, low shares, quota, :func:`role_of`) waits and
  yields by design: only a stall trips it;
- ``progress`` — only a stall trips it: the targets of a sched_ext
  partial-switch canary (the apply result's ``canary = "partial"``), which
  run below every fair-class task.

The policy's own ``[[guard]]`` tables (:func:`policy_guards`) win over these.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedcpd.plugin_api import BreakerSettings, GroupSample, GuardMetrics, GuardRoles, Samples

PROC = Path("/proc")
# Fewer baseline context switches than this say nothing about how a group runs.
MIN_SWITCHES = 20

CPU_METRICS = GuardMetrics(
    latency="wait_per_run_us", throughput="cpu_share",
    latency_text="run-queue wait per run", latency_unit="us",
    throughput_text="CPU share", throughput_unit="CPUs",
    stall_text="had runnable threads but no CPU", min_throughput=0.02)


@dataclass
class CpuSample(GroupSample):
    """A group's sample with its context switches (:func:`classify` reads them)."""

    voluntary: int = 0
    involuntary: int = 0


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
class CpuGuards:
    """Per-group CPU guard metrics of a deployment's target processes (all their threads).

    ``knob_roles`` says what the policy does to each group (:func:`role_of`),
    ``declared`` the policy's own ``[[guard]]`` tables (:func:`policy_guards`).
    """

    groups: dict[str, list[int]]
    knob_roles: dict[str, str] = field(default_factory=dict)
    declared: GuardRoles = field(default_factory=lambda: GuardRoles({}, {}))
    metrics: GuardMetrics = CPU_METRICS
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
                out[group] = CpuSample(now, wait_us, d_cpu / dt / 1e9, runnable, threads,
                                       d_vol, d_invol)
        self._last, self._last_time = current, now
        return out

    def alive(self) -> bool:
        """Whether any target process still exists."""
        return any((PROC / str(p)).exists() for pids in self.groups.values() for p in pids)

    def subset(self, groups: dict[str, list[int]]) -> CpuGuards:
        """The same guards for other targets (the canary subset)."""
        return CpuGuards(groups, self.knob_roles, self.declared)

    def roles(self, baseline: Samples, settings: BreakerSettings) -> GuardRoles:
        """Roles from behaviour (:func:`classify`); the policy's own guards win."""
        roles = classify(baseline, self.knob_roles, settings)
        return GuardRoles({**roles, **self.declared.roles}, dict(self.declared.limits))


def guards_for(policy: dict[str, Any], targets: dict[str, list[int]]) -> CpuGuards:
    """The guards of a scheduler policy's deployment (hook ``schedcp_guards``)."""
    knob_roles = {g["name"]: role_of(g) for g in policy.get("group", []) if isinstance(g, dict)}
    return CpuGuards(dict(targets), knob_roles, policy_guards(policy))


def policy_guards(doc: dict[str, Any]) -> GuardRoles:
    """The policy's own ``[[guard]]`` tables: group -> role, group -> ratio."""
    roles: dict[str, str] = {}
    limits: dict[str, float] = {}
    for guard in doc.get("guard", []):
        if guard.get("metric") == "wait_per_run_us":
            roles[guard["group"]], limits[guard["group"]] = "latency", guard["max_ratio"]
        elif guard.get("metric") == "cpu_share":
            roles[guard["group"]], limits[guard["group"]] = "throughput", guard["min_ratio"]
    return GuardRoles(roles, limits)



def classify(baseline: Samples, knob_roles: dict[str, str],
             settings: BreakerSettings) -> dict[str, str]:
    """Each group's guard role from its baseline behaviour and the policy's knobs."""
    roles = {}
    for group, knob_role in knob_roles.items():
        samples = [x[group] for x in baseline if group in x]
        voluntary = sum(getattr(x, "voluntary", 0) for x in samples)
        switches = voluntary + sum(getattr(x, "involuntary", 0) for x in samples)
        if switches >= MIN_SWITCHES:
            interactive = voluntary / switches >= 0.5
        else:
            per_thread = [x.throughput / x.units for x in samples if x.units]
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
