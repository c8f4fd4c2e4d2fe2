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
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from schedcp_agent import contention, iowait, latency
from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.jobs import JobBatch, helpers_that_fork, job_batches
from schedcp_agent.targets import Proc, ScopeTracker, own_lineage

_LOGGER = logging.getLogger(__name__)

GOALS = ("latency", "throughput", "makespan", "fairness")
SHAPES = ("latency-beside-cpu-hogs", "latency-beside-cpu-and-io", "io-reads-beside-writer",
          "fork-churn", "long-tail-batch", "job-batch",
          "cpu-batch", "interactive", "io-bound", "unclear")
MAX_PERF = 4
PERF_SECONDS = 1.0
CHURN_RATE = 2.0  # processes appearing per second in the scope
_SNAPSHOT_PERIOD = 0.2
FITS = 0.1
"""Run-queue wait per second of run time below which the scope's threads fit the CPUs."""

_DEFAULT_GOAL = {"latency-beside-cpu-hogs": "latency", "latency-beside-cpu-and-io": "latency",
                 "io-reads-beside-writer": "latency", "fork-churn": "makespan",
                 "long-tail-batch": "makespan", "job-batch": "makespan",
                 "cpu-batch": "throughput",
                 "interactive": "latency", "io-bound": "throughput", "unclear": "fairness"}

_DESCRIPTION = {
    "latency-beside-cpu-hogs": "latency-sensitive periodic/interactive task(s) beside "
                               "CPU-bound batch neighbours",
    "latency-beside-cpu-and-io": "latency-sensitive task(s) that wait both for a CPU (beside "
                                 "CPU-bound work) and on the disk",
    "io-reads-beside-writer": "latency-sensitive reads waiting on the disk beside a bulk "
                              "sequential writer",
    "fork-churn": "CPU-intensive parallel job with many short-lived processes (make -j style "
                  "fork churn)",
    "long-tail-batch": "batch set of jobs with a long-tail job: short jobs come and go while "
                       "one long job persists",
    "job-batch": "short-job batch: a driver runs jobs of one command (a set at once, or one "
                 "after another), each a leaf that forks nothing",
    "cpu-batch": "CPU-bound batch processes, nothing latency-sensitive",
    "interactive": "interactive/latency-sensitive tasks without CPU-bound neighbours",
    "io-bound": "I/O-bound processes (their work is moving data to or from the disk)",
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
    competitors: list[dict[str, Any]] = field(default_factory=list)
    """Processes outside the scope the targets compete with (contention.Competitor)."""
    may_act_on_neighbours: bool = False
    nothing_to_gain: str = ""
    """Why there is nothing to decide (one CPU-bound thread per CPU, nothing else), or ""."""
    advice: list[str] = field(default_factory=list)
    """Actions proposed but not taken (outside the scope without the flag)."""
    io: dict[str, dict[str, Any]] = field(default_factory=dict)
    """pid -> the target's I/O evidence (iowait.IoEvidence.as_dict) from GetSummary."""
    io_devices: list[str] = field(default_factory=list)
    """Block devices whose queue settings the agent may change (``--io-device``)."""
    trees: list[int] = field(default_factory=list)
    """Drivers in a role for the jobs they start: their groups cover descendants."""

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
                 seconds: float = 3.0, deep: bool = True, may_act_on_neighbours: bool = False,
                 neighbours_match: str | None = None,
                 protected: set[int] | None = None,
                 io_devices: list[str] | None = None) -> None:
        self.client = client
        self.tracker = tracker
        self.seconds = seconds
        self.deep = deep
        self.may_act = may_act_on_neighbours
        self.neighbours_match = neighbours_match
        self.protected = (protected or set()) | {1}
        """Never competitors: init, schedcpd itself (and the agent's own lineage)."""
        self.found: list[contention.Competitor] = []
        self.allowed: list[contention.Competitor] = []
        self.batches: list[JobBatch] = []
        self.io_devices = list(io_devices or [])
        self.io: dict[int, iowait.IoEvidence] = {}
        self.goal: str | None = None
        self.trees: list[int] = []

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
        self.goal = goal
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
        self._contention(summary, current, evidence)
        waits = {pid: w for pid in current if (w := self.tracker.wait(pid)) is not None}
        self.io = iowait.io_evidence(summary, set(current), waits)
        evidence.extend(e.describe() for e in self.io.values()
                        if e.io_kbs > 0 or e.d_frac > 0 or e.blkio > 0)
        shape, roles = self._shape(targets, evidence)
        for c in self.allowed:
            if c.pid in roles.get("batch", []):
                targets[c.pid] = Target(c.pid, c.comm, c.cls, c.cpu, "neighbour")
        chosen_goal, goal_source = (goal, "given") if goal else (_DEFAULT_GOAL[shape], "inferred")
        if goal is None:
            evidence.append(f"goal {chosen_goal} inferred from the shape {shape}")
        for role, pids in roles.items():
            for pid in pids:
                if pid in targets:
                    targets[pid].role = role
        text = f"{_DESCRIPTION[shape]}{self._neighbours_text()}; goal: {chosen_goal}"
        brief = {k: summary.get(k) for k in ("util", "load", "rqwait", "cs", "forks")}
        brief["psi_cpu_some"] = summary.get("psi", {}).get("cpu", {}).get("some")
        profile = WorkloadProfile(shape, chosen_goal, goal_source, text, targets, roles,
                                  evidence, brief, deep,
                                  [c.as_dict() for c in self.found], self.may_act)
        profile.io = {str(p): e.as_dict() for p, e in self.io.items()}
        profile.io_devices = list(self.io_devices)
        profile.trees = list(self.trees)
        profile.nothing_to_gain = self._nothing_to_gain(profile)
        profile.advice = self._advice(profile)
        return profile

    def _contention(self, summary: dict[str, Any], current: dict[int, Proc],
                    evidence: list[str]) -> None:
        """Name what the targets compete with outside the scope (module contention)."""
        tr = self.tracker
        waits = {pid: w for pid in current if (w := tr.wait(pid)) is not None}
        scope = set(current) | {s.proc.pid for s in tr.seen.values()}
        found = contention.competitors(summary, scope, own_lineage() | self.protected)
        if found and not contention.contended(waits, summary):
            evidence.append(f"{len(found)} busy process(es) outside the scope, but the targets "
                            f"did not wait for a CPU and there is no pressure: not competitors")
            found = []
        self.found = found
        self.allowed = contention.allow(found, self.may_act, self.neighbours_match)
        names = {pid: p.comm for pid, p in current.items()}
        evidence.extend(contention.contention_evidence(waits, names, summary, found))
        if found:
            evidence.append(
                f"may act on {len(self.allowed)} of them (--may-act-on neighbours)" if self.may_act
                else "not acting on them: outside the scope (--may-act-on neighbours allows it)")

    def _neighbours_text(self) -> str:
        if not self.found:
            return ""
        names = ", ".join(f"{c.comm}[{c.pid}]" for c in self.found[:4])
        more = f" and {len(self.found) - 4} more" if len(self.found) > 4 else ""
        return (f", competing with {len(self.found)} CPU-bound process(es) outside the scope "
                f"({names}{more})")

    def _nothing_to_gain(self, profile: WorkloadProfile) -> str:
        """Why the profile offers nothing to decide, or "".

        For CPU-bound batch work (``cpu-batch``, ``job-batch``) with no
        latency-sensitive task, and for latency-sensitive tasks with nothing
        CPU-bound beside them (``interactive``), when nothing else competes
        on the machine and the targets' threads did not wait for each other:
        run-queue wait under :data:`FITS` of their run time means at most one
        runnable thread per CPU.  No per-task or per-cgroup decision (slice,
        policy, weight) then has anything to arbitrate.  (perf bench sched
        pipe on 2026-12-07: interactive-boost cut its run-queue wait 56 %
        and its pipe round trip got 18 % slower.)
        """
        if self.found or profile.shape not in ("cpu-batch", "job-batch", "interactive"):
            return ""
        run, wait = self.tracker.demand()
        if run <= 0.05 or wait > FITS * run:
            return ""
        ncpu = os.cpu_count() or 1
        if profile.shape == "interactive":
            return (f"nothing to gain here: the latency-sensitive tasks ran {run:.2f} cores on "
                    f"{ncpu} CPUs and waited {wait:.3f} s/s for a CPU (at most one runnable "
                    f"thread per CPU), nothing CPU-bound beside them and nothing else competing "
                    f"on the machine")
        what = (", ".join(f"{b.command} jobs" for b in self.batches[:3])
                if profile.shape == "job-batch" else "CPU-bound processes")
        return (f"nothing to gain here: {what} ran {run:.2f} cores on {ncpu} CPUs and waited "
                f"{wait:.3f} s/s for a CPU (at most one runnable thread per CPU), nothing "
                f"latency-sensitive and nothing else competing on the machine")

    def _advice(self, profile: WorkloadProfile) -> list[str]:
        """What the agent would do outside the scope if it were allowed to."""
        out = []
        if profile.shape in ("io-reads-beside-writer", "io-bound") and not self.io_devices:
            out.append("proposed, not done: the io policies also tune the disk's queue (I/O "
                       "scheduler, read deadline, read-ahead, queue depth); those settings are "
                       "machine-wide, so the agent sets only the targets' own I/O priority. "
                       "--io-device NAME lets it change that device's queue")
        not_allowed = [c for c in self.found if not c.may_act]
        if not not_allowed:
            return out
        names = "; ".join(c.describe() for c in not_allowed[:8])
        if profile.goal == "latency" and (profile.roles.get("latency") or
                                         profile.roles.get("foreground")):
            return [*out, f"proposed, not done: protect the latency targets from their competitors "
                    f"by putting them at SCHED_IDLE (latency-protect, 'batch' group): {names}. "
                    f"Acting outside the scope needs --may-act-on neighbours (and the "
                    f"daemon's authorization)"]
        return [*out, f"proposed, not done: the targets compete with {names}; lowering those "
                f"(SCHED_BATCH/nice, or a lower cpu.shares for their unit) would give the "
                f"targets more CPU. Acting outside the scope needs --may-act-on neighbours; "
                f"for goal {profile.goal} the offline rules do not act on neighbours yet"]

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
        batches = [b for b in job_batches(tr) if b.root]
        if batches:
            self.batches = batches
            roots = sorted({b.root for b in batches})
            return "job-batch", {"batch": roots}, [b.describe() for b in batches[:3]]
        churn_roots = sorted({p.ppid for p in appeared if p.ppid in current} |
                             {t.pid for t in targets.values() if t.cls == "churn"})
        forkers = helpers_that_fork(tr)
        if (rate >= CHURN_RATE or any(t.cls == "churn" for t in targets.values())
                or len(forkers) >= 2):
            roots = [p for p in churn_roots if current.get(p) and
                     current[p].ppid not in current] or churn_roots
            helpers = [f"{len(forkers)} short-lived processes forked helpers of their own ("
                       + ", ".join(f"{f.comm}[{f.pid}]" for f in forkers[:4]) + ")"
                       ] if forkers else []
            return "fork-churn", {"build": roots or sorted(current)}, helpers
        return None

    def _latency_first(self, evidence: list[str]) -> tuple[str, dict[str, list[int]]] | None:
        """A latency shape when the run pattern shows one (module latency), before job shapes.

        A latency-sensitive unit beside CPU-bound work (in the scope, or
        competitors outside it) is a latency case when it waited for a CPU or
        the goal is latency, whatever short jobs run around it; with the goal
        latency and nothing CPU-bound, latency-sensitive units are
        ``interactive``.  Targets that wait on the disk are left to the I/O
        shapes.
        """
        if any(e.d_frac > 0 or e.blkio > 0 for e in self.io.values()):
            return None
        case = latency.latency_case(self.tracker)
        if not case.latency:
            return None
        beside = bool(case.cpu_bound or self.found)
        if not (self.goal == "latency" or (beside and case.waited)):
            return None
        evidence.extend(u.describe() for u in case.latency + case.cpu_bound)
        lat = sorted({u.root for u in case.latency})
        self.trees = sorted({u.root for u in case.latency if u.transient})
        if not beside:
            evidence.append("latency-sensitive tasks (short runs, woken often) and nothing "
                            "CPU-bound beside them: an interactive case, whatever job loop "
                            "runs them")
            return "interactive", {"foreground": lat}
        batch: set[int] = set()
        for u in case.cpu_bound:
            if u.transient and u.root in lat:
                batch.update(p for p in u.pids if p in self.tracker.current)
            else:
                batch.add(u.root)
                if u.transient and u.root not in self.trees:
                    self.trees.append(u.root)
        batch |= {c.pid for c in self.allowed}
        evidence.append(f"latency-sensitive tasks {'waited for a CPU ' if case.waited else ''}"
                        f"beside CPU-bound work: a latency case, whatever short jobs run "
                        f"beside them")
        return "latency-beside-cpu-hogs", {"latency": lat,
                                           **({"batch": sorted(batch)} if batch else {})}

    def _shape(self, targets: dict[int, Target],
               evidence: list[str]) -> tuple[str, dict[str, list[int]]]:
        tr = self.tracker
        current = tr.current
        appeared, vanished, persisted = tr.appeared(), tr.vanished(), tr.persisted()
        rate = len(appeared) / tr.seconds
        evidence.append(f"{len(appeared)} processes appeared ({rate:.1f}/s), {len(vanished)} "
                        f"ended, {len(persisted)} persisted through the observation")
        first = self._latency_first(evidence)
        if first is not None:
            return first
        structure = self._structure(targets)
        if structure is not None:
            evidence.extend(structure[2])
            if structure[0] in ("job-batch", "fork-churn"):
                # The drivers' jobs come and go: their figure is the whole tree's.
                self.trees = sorted({p for pids in structure[1].values() for p in pids})
            return structure[0], structure[1]
        hogs = sorted(t.pid for t in targets.values() if t.cls == "cpu-bound")
        io_shape = iowait.io_shape(self.io, hogs, bool(self.found))
        if io_shape is not None:
            evidence.extend(io_shape[2])
            return io_shape[0], io_shape[1]
        inter = sorted(t.pid for t in targets.values() if t.cls == "interactive")
        if inter and (hogs or self.found):
            # The hogs may be competitors outside the scope: named in the profile,
            # in the batch role only where the run may act on them.
            batch = sorted(set(hogs) | {c.pid for c in self.allowed})
            return "latency-beside-cpu-hogs", {"latency": inter, **({"batch": batch} if batch
                                                                   else {})}
        if hogs:
            return "cpu-batch", {"batch": hogs}
        if inter:
            return "interactive", {"foreground": inter}
        if any(t.cls == "io-bound" for t in targets.values()):
            return "io-bound", {"io": sorted(t.pid for t in targets.values()
                                             if t.cls == "io-bound")}
        return "unclear", {"all": sorted(current)}
