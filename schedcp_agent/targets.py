"""Which processes the agent may retune: its scope, resolved to pids (read-only).

The agent only ever changes what the user handed it: ``--pid`` (with every
descendant), ``--cgroup``, ``--match`` (a regular expression searched in the
command line) or the command it started itself.  Resolving that to pids needs
the process table, which every user may read (``ps``/``pgrep`` do the same):
this module reads ``/proc/<pid>/{stat,cmdline,cgroup}`` and nothing else, and
writes nothing.  How the processes *behave* comes from schedcpd (GetSummary,
RunPerfStat), not from here.

:class:`ScopeTracker` takes snapshots while the agent observes, so the
profile can tell structure apart: processes that appear and vanish (fork
churn, a job pool), and ones that persist (a long job, a service).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    """One process as the process table shows it."""

    pid: int
    ppid: int
    comm: str
    cmdline: str
    start: int
    cgroups: tuple[str, ...]
    threads: int = 1
    child_ticks: int = 0
    """CPU of its reaped children (cutime + cstime, clock ticks): it forked helpers."""


@dataclass
class Scope:
    """What the agent may touch; exactly one selector is normally given."""

    pids: list[int] = field(default_factory=list)
    cgroup: str | None = None
    match: str | None = None

    def describe(self) -> str:
        """A short human description of the scope."""
        parts = []
        if self.pids:
            parts.append("pid " + ",".join(map(str, self.pids)) + " and descendants")
        if self.cgroup:
            parts.append(f"cgroup {self.cgroup}")
        if self.match:
            parts.append(f"command lines matching /{self.match}/")
        return "; ".join(parts) or "nothing"


def read_proc(pid: int) -> Proc | None:
    """The process ``pid`` or None when it is gone or unreadable (kernel threads: None)."""
    base = _PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
        raw = (base / "cmdline").read_bytes()
        cg = (base / "cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    if not raw:
        return None  # kernel thread or zombie: never a target
    comm = stat[stat.index("(") + 1: stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2:].split()
    cgroups = tuple(line.split(":", 2)[2] for line in cg.splitlines() if line.count(":") >= 2)
    return Proc(pid=pid, ppid=int(rest[1]), comm=comm,
                cmdline=raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace"),
                start=int(rest[19]), cgroups=cgroups, threads=int(rest[17]),
                child_ticks=int(rest[13]) + int(rest[14]))


def read_schedstat(pid: int) -> tuple[int, int, int] | None:
    """(ns on a CPU, ns waiting on a run queue, times run) of ``pid``'s threads so far, or None.

    ``/proc/PID/schedstat`` is world-readable like ``stat``: how long the
    process waited for a CPU is the first sign of what it competes with.
    """
    run = wait = slices = 0
    try:
        for task in os.scandir(_PROC / str(pid) / "task"):  # every thread
            fields = (Path(task.path) / "schedstat").read_text().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
            slices += int(fields[2])
    except (OSError, ValueError, IndexError):
        return None
    return run, wait, slices


def read_switches(pid: int) -> tuple[int, int] | None:
    """(voluntary, involuntary) context switches of ``pid``'s threads so far, or None.

    A task that sleeps for an event (a request, a timer, a message) switches
    out voluntarily; one that always has work is preempted (involuntary).
    ``/proc/PID/task/TID/status`` is world-readable.
    """
    vol = invol = 0
    try:
        for task in os.scandir(_PROC / str(pid) / "task"):
            for line in (Path(task.path) / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return vol, invol


def process_table() -> dict[int, Proc]:
    """Every user process now."""
    out = {}
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            proc = read_proc(int(entry.name))
            if proc is not None:
                out[proc.pid] = proc
    return out


def own_lineage() -> set[int]:
    """This process and its ancestors: a --match must never select the agent itself."""
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        proc = read_proc(pid)
        if proc is None:
            break
        pid = proc.ppid
    return out


def resolve(scope: Scope, table: dict[int, Proc] | None = None) -> dict[int, Proc]:
    """The processes in ``scope`` now (the agent and its ancestors excluded)."""
    table = process_table() if table is None else table
    mine = own_lineage()
    chosen: set[int] = set()
    if scope.pids:
        children: dict[int, list[int]] = {}
        for p in table.values():
            children.setdefault(p.ppid, []).append(p.pid)
        todo = [p for p in scope.pids if p in table]
        while todo:
            pid = todo.pop()
            if pid not in chosen:
                chosen.add(pid)
                todo.extend(children.get(pid, []))
    if scope.cgroup:
        cg = scope.cgroup.rstrip("/")
        chosen |= {p.pid for p in table.values()
                   if any(c == cg or c.startswith(cg + "/") for c in p.cgroups)}
    if scope.match:
        rx = re.compile(scope.match)
        chosen |= {p.pid for p in table.values() if rx.search(p.cmdline)}
    return {pid: table[pid] for pid in sorted(chosen - mine)}


@dataclass
class Seen:
    """A target's life during the observation."""

    proc: Proc
    first: float
    last: float
    alive_at_start: bool
    frames: int = 1
    """How many snapshots saw it (a job that runs is seen in more than one)."""
    peak: int = 0
    """The most processes of the same parent alive in one snapshot with it."""


class ScopeTracker:
    """Snapshots of the scope over time: who persisted, who came and went."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.seen: dict[tuple[int, int], Seen] = {}
        self.snapshots = 0
        self.started = 0.0
        self.ended = 0.0
        self.current: dict[int, Proc] = {}
        self.schedstat: dict[int, tuple[float, tuple[int, ...], float, tuple[int, ...]]] = {}
        """pid -> (first time, first schedstat, last time, last schedstat); a schedstat is
        (ns run, ns waited, times run, voluntary switches, involuntary switches)."""

    def snapshot(self) -> dict[int, Proc]:
        """Take one snapshot; return the scope now."""
        now = time.monotonic()
        if not self.snapshots:
            self.started = now
        procs = resolve(self.scope)
        siblings: dict[int, int] = {}
        for p in procs.values():
            siblings[p.ppid] = siblings.get(p.ppid, 0) + 1
        for p in procs.values():
            key = (p.pid, p.start)
            s = self.seen.get(key)
            if s is None:
                s = self.seen[key] = Seen(p, now, now, alive_at_start=not self.snapshots)
            else:
                s.last = now
                s.frames += 1
                s.proc = p  # the latest view: a forked child's comm changes at exec
            s.peak = max(s.peak, siblings[p.ppid])
            st: tuple[int, ...] | None = read_schedstat(p.pid)
            sw = read_switches(p.pid)
            if st is not None and sw is not None:
                st = st + sw
            if st is not None:
                old = self.schedstat.get(p.pid)
                self.schedstat[p.pid] = (old[0], old[1], now, st) if old else (now, st, now, st)
        self.snapshots += 1
        self.ended = now
        self.current = procs
        return procs

    @property
    def seconds(self) -> float:
        """How long the observation has lasted."""
        return max(self.ended - self.started, 1e-9)

    def wait(self, pid: int) -> float | None:
        """Run-queue wait of ``pid`` during the observation (s per s), None if unknown."""
        got = self.schedstat.get(pid)
        if got is None or got[2] - got[0] < 0.5:
            return None
        return max(0.0, (got[3][1] - got[1][1]) / 1e9 / (got[2] - got[0]))

    def demand(self) -> tuple[float, float]:
        """(cores run, cores waiting for a CPU) of the whole scope over the observation.

        Summed over every process seen, each between its first and last
        snapshot (a short job's part before the first snapshot is missed).
        """
        run = wait = 0.0
        for first_t, first, last_t, last in self.schedstat.values():
            if last_t > first_t:
                run += max(0, last[0] - first[0]) / 1e9
                wait += max(0, last[1] - first[1]) / 1e9
        return run / self.seconds, wait / self.seconds

    def persisted(self) -> list[Proc]:
        """Processes alive from the first to the last snapshot."""
        return [s.proc for s in self.seen.values()
                if s.alive_at_start and s.proc.pid in self.current
                and self.current[s.proc.pid].start == s.proc.start]

    def appeared(self) -> list[Proc]:
        """Processes that started during the observation."""
        return [s.proc for s in self.seen.values() if not s.alive_at_start]

    def vanished(self) -> list[Proc]:
        """Processes that ended during the observation."""
        return [s.proc for s in self.seen.values()
                if s.proc.pid not in self.current or
                self.current[s.proc.pid].start != s.proc.start]
