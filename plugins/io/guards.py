"""The io subsystem's guards: each group's block-I/O wait per I/O and its I/O rate.

Per target process, from ``/proc/<pid>/stat`` (``delayacct_blkio_ticks``,
the taskstats block-I/O delay, in clock ticks; it counts only while
``kernel.task_delayacct`` is 1, which the plugin turns on, journaled, when it
starts) and ``/proc/<pid>/io`` (``syscr``/``syscw`` operations and
``read_bytes``/``write_bytes`` that reached the block layer):

- latency: block-I/O delay per read/write call in the window, in ms
  (``None`` when the group made no call);
- throughput: bytes read plus written per wall second, in MiB/s;
- pending: tasks in uninterruptible sleep (``D``), units: tasks seen.

Roles: a group the policy lowers (ioprio ``idle``, best-effort level 5..7,
or throttled) is a ``donor``; a group that made I/O calls in the baseline is
guarded on ``latency``; the rest on ``progress``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from schedcpd.plugin_api import (
    BreakerSettings,
    GroupSample,
    GuardMetrics,
    GuardRoles,
    Guards,
    Samples,
    procfs,
)

IO_METRICS = GuardMetrics(
    latency="blkio_wait_per_io_ms", throughput="io_mib_s",
    latency_text="block-I/O wait per I/O call", latency_unit="ms",
    throughput_text="I/O rate", throughput_unit="MiB/s",
    stall_text="had tasks waiting on I/O but moved no bytes",
    min_throughput=0.5)
_TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


def _read_io(pid: int) -> tuple[int, int] | None:
    """(read+write calls, bytes read+written at the block layer) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    kv = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return (int(kv.get("syscr", 0)) + int(kv.get("syscw", 0)),
            int(kv.get("read_bytes", 0)) + int(kv.get("write_bytes", 0)))


def lowered(group: dict[str, Any]) -> bool:
    """Whether the policy lowers this group's I/O (it gives way: a donor)."""
    prio = group.get("ioprio") or {}
    return bool(group.get("throttle")) or prio.get("class") == "idle" or (
        prio.get("class") == "be" and int(prio.get("level", 4)) >= 5)


class IoGuards:
    """Samples each group's I/O wait and rate for the circuit breaker."""

    metrics = IO_METRICS

    def __init__(self, policy: dict[str, Any], groups: dict[str, list[int]]) -> None:
        self.policy = policy
        self.groups = groups
        self._last: dict[int, tuple[float, int, int, int]] = {}

    def _pid(self, pid: int, now: float) -> tuple[float, int, int, bool] | None:
        """(delay ticks, calls, bytes, in D) deltas of one process; None if gone/new."""
        stat = procfs.read_pid_stat(pid)
        io = _read_io(pid)
        if stat is None or io is None:
            self._last.pop(pid, None)
            return None
        prev = self._last.get(pid)
        self._last[pid] = (now, stat.blkio_ticks, io[0], io[1])
        if prev is None:
            return None
        return (stat.blkio_ticks - prev[1], io[0] - prev[2], io[1] - prev[3],
                stat.state == "D")

    def sample(self) -> dict[str, GroupSample]:
        """One sample per group with a live target (the first call only primes)."""
        now = time.monotonic()
        out: dict[str, GroupSample] = {}
        for group, pids in self.groups.items():
            ticks = calls = nbytes = pending = units = 0
            elapsed = None
            for pid in pids:
                prev = self._last.get(pid)
                delta = self._pid(pid, now)
                if delta is None or prev is None:
                    continue
                elapsed = now - prev[0]
                units += 1
                ticks += int(delta[0])
                calls += delta[1]
                nbytes += delta[2]
                pending += int(delta[3])
            if units and elapsed:
                latency = ticks * _TICK_MS / calls if calls else None
                out[group] = GroupSample(now, latency, nbytes / 2**20 / elapsed, pending, units)
        return out

    def alive(self) -> bool:
        """Whether any target still exists."""
        return any(os.path.exists(f"/proc/{p}") for pids in self.groups.values() for p in pids)

    def subset(self, groups: dict[str, list[int]]) -> Guards:
        """The same guards for the canary subset."""
        return IoGuards(self.policy, groups)

    def roles(self, baseline: Samples, settings: BreakerSettings) -> GuardRoles:
        """Donors (lowered by the policy), latency (did I/O calls) or progress."""
        lowered_groups = {g["name"] for g in self.policy.get("group", []) if lowered(g)}
        roles = {}
        for group in self.groups:
            did_io = any(s[group].latency is not None for s in baseline if group in s)
            roles[group] = ("donor" if group in lowered_groups
                            else "latency" if did_io else "progress")
        return GuardRoles(roles, {})
