"""What the targets compete with, machine-wide: the competitors outside the scope.

A user who names only the task to protect (``--match probe``) still needs an
agent that sees the machine.  The observation measures how long the targets
waited for a CPU (their threads' run-queue wait, ``/proc/PID/task/*/schedstat``
over the observation) and reads the daemon's summary of the whole host (top
consumers, CPU/I/O/memory pressure, each process's cgroup): every CPU-bound
or fork-churning process outside the scope is a *competitor*, named in the
profile with its CPU, threads, cgroup and unit.

Acting on a competitor is a decision with a rule (docs/agent.md, "Acting
outside the scope"): by default the agent only *proposes* it (advice in the
report); with ``--may-act-on neighbours`` the competitors that
``--neighbours-match`` allows (all of them when it is not given) join the
profile as targets of the ``batch`` role, and the daemon's authorization
still decides whether the deployment may touch them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from schedcp_agent.targets import read_proc

COMPETING = ("cpu-bound", "churn")
MIN_DEMAND = 0.3
"""Cores a process outside the scope must want (CPU used + run-queue wait) to compete.

Wanted, not used: on a saturated machine a CPU-bound loop may get 0.2 cores
and wait 0.75 s per second for the rest."""
WAITING = 0.05
"""Run-queue wait (s per s) of a target that counts as waiting for a CPU."""
PRESSURE = 10.0
"""PSI ``some`` avg10 (percent) that counts as pressure on a resource."""


@dataclass
class Competitor:
    """A process outside the scope that takes CPU the targets wait for."""

    pid: int
    comm: str
    cls: str
    cpu: float
    threads: int
    cgroup: str
    unit: str
    session: str
    """Process group leader as ``pgid:comm`` (a shell job, a service)."""
    cmdline: str = ""
    wait: float = 0.0
    """Its own run-queue wait (s per s): it wants that much more CPU."""
    may_act: bool = False
    """Whether this run may act on it (``--may-act-on neighbours``)."""

    def describe(self) -> str:
        """``comm[pid] 0.66 cores, cpu-bound, in unit``."""
        return (f"{self.comm}[{self.pid}] {self.cpu:.2f} cores (+{self.wait:.2f} waiting), "
                f"{self.cls}, {self.threads} "
                f"thread(s), in {self.unit or self.cgroup or '?'} (session {self.session})")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def unit_of(cgroup: str) -> str:
    """The systemd unit (service, scope, slice) a cgroup path belongs to, or the path."""
    parts = [p for p in cgroup.split("/") if p]
    for part in reversed(parts):
        if part.endswith((".service", ".scope")):
            return part
    for part in reversed(parts):
        if part.endswith(".slice"):
            return part
    return cgroup or "/"


def competitors(summary: dict[str, Any], scope: set[int], exclude: set[int]) -> list[Competitor]:
    """CPU-bound or churning processes of the summary's top outside ``scope``, neediest first."""
    out = []
    for e in summary.get("top", []):
        pid = e.get("pid")
        if not isinstance(pid, int) or pid in scope or pid in exclude:
            continue
        cls, cpu = str(e.get("cls") or ""), float(e.get("cpu") or 0.0)
        wait = float(e.get("wait") or 0.0)
        if (str(e.get("root", "")).startswith("kernel") or cls not in COMPETING
                or cpu + wait < MIN_DEMAND):
            continue
        proc = read_proc(pid)
        if proc is None:
            continue  # gone, or a kernel thread
        cg = str(e.get("cg") or "")
        out.append(Competitor(pid, str(e.get("comm") or proc.comm), cls, round(cpu, 3),
                              int(e.get("thr") or proc.threads), cg, unit_of(cg),
                              str(e.get("root") or ""), proc.cmdline[:200], round(wait, 3)))
    return sorted(out, key=lambda c: -(c.cpu + c.wait))


def pressure(summary: dict[str, Any]) -> dict[str, float]:
    """PSI ``some`` avg10 per resource (cpu, io, memory) from the summary."""
    out = {}
    for res, val in (summary.get("psi") or {}).items():
        some = (val or {}).get("some") or []
        if some and isinstance(some[0], int | float):
            out[res] = float(some[0])
    return out


def allow(found: list[Competitor], may_act: bool, pattern: str | None) -> list[Competitor]:
    """Mark (and return) the competitors this run may act on."""
    if not may_act:
        return []
    rx = re.compile(pattern) if pattern else None
    chosen = [c for c in found if c.cls == "cpu-bound" and (rx is None or rx.search(c.cmdline))]
    for c in chosen:
        c.may_act = True
    return chosen


def contention_evidence(waits: dict[int, float], names: dict[int, str],
                        summary: dict[str, Any], found: list[Competitor]) -> list[str]:
    """Evidence lines: the targets' wait, the machine's pressure, the competitors."""
    lines = []
    for pid, w in sorted(waits.items(), key=lambda kv: -kv[1])[:4]:
        lines.append(f"{names.get(pid, '?')}[{pid}] waited {w:.3f} s/s for a CPU during the "
                     f"observation (run-queue wait, schedstat)")
    psi = pressure(summary)
    if psi:
        lines.append("pressure (PSI some avg10): " +
                     ", ".join(f"{k} {v:g} %" for k, v in sorted(psi.items())) +
                     f"; machine run-queue wait {summary.get('rqwait')} s/s, "
                     f"utilisation {summary.get('util')}")
    if found:
        lines.append(f"{len(found)} competitor(s) outside the scope: " +
                     "; ".join(c.describe() for c in found[:8]))
    return lines


def contended(waits: dict[int, float], summary: dict[str, Any]) -> bool:
    """Whether the targets wait for a resource (their own wait, or the machine's pressure)."""
    return any(w >= WAITING for w in waits.values()) or any(
        v >= PRESSURE for v in pressure(summary).values())
