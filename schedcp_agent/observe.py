"""Observation role: a workload profile of the targets, cheap summary first.

The role watches the scope for a few seconds (structure: which processes
persist, which come and go), asks schedcpd for the tier-1 summary
(``GetSummary normal``) and, only when that leaves the workload unclear --
targets the summary does not classify (it lists the host's busiest
processes, not the agent's) and no process structure (a job pool, fork
churn) that already tells the shape -- asks for deeper profiling with
``RunPerfStat`` on up to :data:`MAX_PERF` of them.  The
result is a :class:`WorkloadProfile`: a shape, a goal, a natural-language
description and the evidence for both.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.targets import Proc, ScopeTracker

_LOGGER = logging.getLogger(__name__)

GOALS = ("latency", "throughput", "makespan", "fairness")
SHAPES = ("latency-beside-cpu-hogs", "fork-churn", "long-tail-batch", "cpu-batch",
          "interactive", "io-bound", "unclear")
MAX_PERF = 4
PERF_SECONDS = 1.0
CHURN_RATE = 2.0  # processes appearing per second in the scope
_SNAPSHOT_PERIOD = 0.2

_DEFAULT_GOAL = {"latency-beside-cpu-hogs": "latency", "fork-churn": "makespan",
                 "long-tail-batch": "makespan", "cpu-batch": "throughput",
                 "interactive": "latency", "io-bound": "latency", "unclear": "fairness"}

_DESCRIPTION = {
    "latency-beside-cpu-hogs": "latency-sensitive periodic/interactive task(s) beside "
                               "CPU-bound batch neighbours",
    "fork-churn": "CPU-intensive parallel job with many short-lived processes (make -j style "
                  "fork churn)",
    "long-tail-batch": "batch set of jobs with a long-tail job: short jobs come and go while "
                       "one long job persists",
    "cpu-batch": "CPU-bound batch processes, nothing latency-sensitive",
    "interactive": "interactive/latency-sensitive tasks without CPU-bound neighbours",
    "io-bound": "I/O-bound processes",
    "unclear": "processes whose behaviour the summary does not make clear",
}


@dataclass
class Target:
    """One target process and what the agent learned about it."""

    pid: int
    comm: str
    cls: str
    cpu: float | None = None
    source: str = ""
    role: str = ""


@dataclass
class WorkloadProfile:
    """The observation's hand-off to planning."""

    shape: str
    goal: str
    goal_source: str
    text: str
    targets: dict[int, Target] = field(default_factory=dict)
    roles: dict[str, list[int]] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    deep_profiling: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """What "the same profile" means for repository hits: goal and shape."""
        return f"{self.goal}.{self.shape}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (targets keyed by pid as strings)."""
        out = asdict(self)
        out["targets"] = {str(k): asdict(v) for k, v in self.targets.items()}
        out["key"] = self.key
        return out


def classify_perf(result: dict[str, Any]) -> tuple[str, float, str]:
    """(class, cores, evidence) of one process from a RunPerfStat answer."""
    events = result.get("events", {})
    elapsed = float(result.get("elapsed") or result.get("seconds") or 1.0)
    clock = events.get("task-clock", {})
    cs = events.get("context-switches", {})
    ms = float(clock.get("value") or 0.0) if clock.get("counted") else 0.0
    switches = float(cs.get("value") or 0.0) if cs.get("counted") else 0.0
    cores = ms / 1000.0 / max(elapsed, 1e-3)
    per_switch = ms / max(switches, 1.0)
    rate = switches / max(elapsed, 1e-3)
    if cores < 0.005 and rate < 1:
        cls = "idle"
    elif cores >= 0.5 or per_switch >= 0.6:
        cls = "cpu-bound"
    elif rate >= 20:
        cls = "interactive"
    else:
        cls = "mixed"
    return cls, cores, (f"{cores:.2f} cores, {rate:.0f} switches/s, "
                        f"{per_switch:.2f} ms CPU per switch")


class Observer:
    """Builds a :class:`WorkloadProfile` of the scope through schedcpd."""

    def __init__(self, client: SchedcpClient, tracker: ScopeTracker,
                 seconds: float = 3.0, deep: bool = True) -> None:
        self.client = client
        self.tracker = tracker
        self.seconds = seconds
        self.deep = deep

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.seconds
        while True:
            await asyncio.to_thread(self.tracker.snapshot)
            if loop.time() >= end:
                return
            await asyncio.sleep(_SNAPSHOT_PERIOD)

    async def observe(self, goal: str | None) -> WorkloadProfile:
        """Watch, summarise, profile deeper where needed; return the profile."""
        await self._watch()
        summary = await self.client.call("GetSummary", "normal")
        current = self.tracker.current
        evidence = [f"scope: {self.tracker.scope.describe()}: {len(current)} processes now, "
                    f"{len(self.tracker.seen)} seen in {self.tracker.seconds:.1f} s"]
        targets: dict[int, Target] = {}
        top = {int(e["pid"]): e for e in summary.get("top", []) if "pid" in e}
        for pid, proc in current.items():
            entry = top.get(pid)
            if entry is not None and entry.get("cls") not in ("mixed", None):
                targets[pid] = Target(pid, proc.comm, str(entry.get("cls", "mixed")),
                                      float(entry.get("cpu", 0.0)), "summary")
        deep: list[str] = []
        missing = [p for p in self._by_age(current) if p not in targets]
        structure = self._structure(targets)
        if missing and structure is not None:
            evidence.append(f"no deeper profiling: the process structure already shows "
                            f"{structure[0]} ({len(missing)} targets not in the summary)")
        elif missing and self.deep:
            await self._perf(missing[:MAX_PERF], current, targets, deep, evidence)
        for pid, proc in current.items():
            targets.setdefault(pid, Target(pid, proc.comm, "unknown", None, "not profiled"))
        for t in targets.values():
            if t.source == "summary":
                evidence.append(f"{t.comm}[{t.pid}]: {t.cls} ({t.cpu} cores) per GetSummary")
        shape, roles = self._shape(targets, evidence)
        chosen_goal, goal_source = (goal, "given") if goal else (_DEFAULT_GOAL[shape], "inferred")
        if goal is None:
            evidence.append(f"goal {chosen_goal} inferred from the shape {shape}")
        for role, pids in roles.items():
            for pid in pids:
                if pid in targets:
                    targets[pid].role = role
        text = f"{_DESCRIPTION[shape]}; goal: {chosen_goal}"
        brief = {k: summary.get(k) for k in ("util", "load", "rqwait", "cs", "forks")}
        brief["psi_cpu_some"] = summary.get("psi", {}).get("cpu", {}).get("some")
        return WorkloadProfile(shape, chosen_goal, goal_source, text, targets, roles, evidence,
                               brief, deep)

    @staticmethod
    def _by_age(current: dict[int, Proc]) -> list[int]:
        """Oldest first: a long-lived process says more than a short one."""
        return [p.pid for p in sorted(current.values(), key=lambda p: (p.start, p.pid))]

    async def _perf(self, pids: list[int], current: dict[int, Proc],
                    targets: dict[int, Target], deep: list[str], evidence: list[str]) -> None:
        sem = asyncio.Semaphore(2)  # the daemon runs at most two perf stat at once

        async def one(pid: int) -> None:
            async with sem:
                try:
                    result = await self.client.call("RunPerfStat", pid, "", PERF_SECONDS)
                except DaemonError as err:
                    if err.short == "AccessDenied":
                        raise
                    evidence.append(f"RunPerfStat {pid}: {err.short}: {err.message}")
                    return
            cls, cores, why = classify_perf(result)
            deep.append(f"RunPerfStat pid {pid}")
            targets[pid] = Target(pid, current[pid].comm, cls, round(cores, 3), "perf stat")
            evidence.append(f"{current[pid].comm}[{pid}]: {cls} ({why}) per RunPerfStat")

        await asyncio.gather(*(one(p) for p in pids))

    def _structure(self, targets: dict[int, Target]
                   ) -> tuple[str, dict[str, list[int]], list[str]] | None:
        """A shape the process structure alone shows (job pool, fork churn), or None.

        Returns (shape, roles, evidence); per-process classes are not needed
        for these, so the observation asks for no deeper profiling.
        """
        tr = self.tracker
        current = tr.current
        appeared, vanished, persisted = tr.appeared(), tr.vanished(), tr.persisted()
        rate = len(appeared) / tr.seconds
        children: dict[int, list[Proc]] = {}
        for s in tr.seen.values():
            children.setdefault(s.proc.ppid, []).append(s.proc)
        # Long tail: a parent whose jobs come and go while one (or a few) persists.
        for parent, kids in children.items():
            if parent not in current:
                continue
            done = [k for k in kids if k in vanished]
            stay = [k for k in kids if k in persisted]
            if len(done) >= 3 and 1 <= len(stay) <= max(1, len(kids) // 8):
                why = (f"{current[parent].comm}[{parent}] is a job pool: {len(done)} jobs "
                       f"finished while {len(stay)} ran throughout "
                       f"({', '.join(f'{k.comm}[{k.pid}]' for k in stay)})")
                short = [k.pid for k in kids if k.pid in current and k not in stay]
                return "long-tail-batch", {"long": [k.pid for k in stay],
                                           "driver": [parent], "short": short}, [why]
        churn_roots = sorted({p.ppid for p in appeared if p.ppid in current} |
                             {t.pid for t in targets.values() if t.cls == "churn"})
        if rate >= CHURN_RATE or any(t.cls == "churn" for t in targets.values()):
            roots = [p for p in churn_roots if current.get(p) and
                     current[p].ppid not in current] or churn_roots
            return "fork-churn", {"build": roots or sorted(current)}, []
        return None

    def _shape(self, targets: dict[int, Target],
               evidence: list[str]) -> tuple[str, dict[str, list[int]]]:
        tr = self.tracker
        current = tr.current
        appeared, vanished, persisted = tr.appeared(), tr.vanished(), tr.persisted()
        rate = len(appeared) / tr.seconds
        evidence.append(f"{len(appeared)} processes appeared ({rate:.1f}/s), {len(vanished)} "
                        f"ended, {len(persisted)} persisted through the observation")
        structure = self._structure(targets)
        if structure is not None:
            evidence.extend(structure[2])
            return structure[0], structure[1]
        hogs = sorted(t.pid for t in targets.values() if t.cls == "cpu-bound")
        inter = sorted(t.pid for t in targets.values() if t.cls == "interactive")
        if hogs and inter:
            return "latency-beside-cpu-hogs", {"latency": inter, "batch": hogs}
        if hogs:
            return "cpu-batch", {"batch": hogs}
        if inter:
            return "interactive", {"foreground": inter}
        if any(t.cls == "io-bound" for t in targets.values()):
            return "io-bound", {"io": sorted(t.pid for t in targets.values()
                                             if t.cls == "io-bound")}
        return "unclear", {"all": sorted(current)}
