"""The workload contract every benchmark workload implements.

A workload is a set of long-lived processes started once per workload run
(the *session*): services, batch neighbours and a *driver* that performs the
measured unit again and again (one hackbench run, one redis-benchmark run,
one long-tail job set, one probe interval) and appends one JSON object per
unit to a JSON-lines log.  The runner deploys and rolls back policies on the
running session and asks for metrics over time windows:
``measure(session, t0, t1)`` reduces the records whose unit started at or
after ``t0`` and ended by ``t1`` (``time.monotonic()`` seconds).

Every process of a session is a descendant of ``session.procs`` (started in
their own process groups), so a policy bound to those pids, or the
``session.match`` regex over command lines, covers the whole workload,
including the jobs it forks later.  ``session.roles`` names which pids play
which role for the built-in policies' groups (``latency``, ``batch``,
``build``, ``long``, ``short``, ``foreground``, ``noisy``); a role played
by processes that live within one unit (a long-tail set's jobs) is named in
``session.role_match`` with a ``[group.match]`` table instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Metric:
    """One figure a workload reports; ``weight`` is its default alpha in the score."""

    name: str
    unit: str
    better: Better
    weight: float = 1.0
    description: str = ""
    floor: float = 0.0
    """The least value the score tells apart: below it a figure counts as it
    in a ratio.  For figures that reach 0 (a probe that missed no period): 0
    against 0.1 % would otherwise be a ratio clamped at ``max_ratio``, one
    term outweighing a whole suite."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (results.json's ``metrics``; the score reads it)."""
        return {"name": self.name, "unit": self.unit, "better": self.better,
                "weight": self.weight, "description": self.description, "floor": self.floor}


@dataclass(frozen=True)
class SLO:
    """A service-level objective on one metric: ``metric op value``."""

    metric: str
    op: Literal["<=", ">="]
    value: float
    hard: bool = True

    def met(self, value: float | None) -> bool:
        """Whether ``value`` meets the objective (a missing value never does)."""
        if value is None:
            return False
        return value <= self.value if self.op == "<=" else value >= self.value


@dataclass
class Session:
    """A running workload: its processes, its log, how to target it."""

    workload: str
    dir: Path
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    roles: dict[str, list[int]] = field(default_factory=dict)
    # Roles played by processes born and gone within a unit: a match table each.
    role_match: dict[str, dict[str, Any]] = field(default_factory=dict)
    match: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process of this session in its own process group."""
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        if "stderr" in kwargs:
            proc = subprocess.Popen(argv, start_new_session=True, cwd=self.dir, **kwargs)
        else:
            with (self.dir / "stderr.log").open("ab") as err:  # the child keeps its copy
                proc = subprocess.Popen(argv, start_new_session=True, cwd=self.dir,
                                        stderr=err, **kwargs)
        self.procs.append(proc)
        return proc

    def records(self, t0: float, t1: float) -> list[dict[str, Any]]:
        """Log records with ``t0 <= start`` and ``end <= t1``."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if t0 <= rec.get("start", -1.0) and rec.get("end", float("inf")) <= t1:
                out.append(rec)
        return out

    def alive(self) -> bool:
        """Whether every process of the session still runs."""
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        """Kill every process group of the session and reap it."""
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait()


class Workload:
    """Base class: subclasses set the class attributes and implement start/metrics."""

    name: str = ""
    description: str = ""
    track: str = "T1"
    #: Debian packages it needs (requirements-apt.txt installs them).
    packages: tuple[str, ...] = ()
    #: executables that must be on PATH (checked by :meth:`unavailable`).
    commands: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = ()
    slos: tuple[SLO, ...] = ()
    #: the goal an operator would give the agent for this workload.
    goal: str = "latency"
    #: seconds after start before the first window is meaningful.
    warmup: float = 1.0
    #: the shortest useful window (s): one that always holds a complete unit.
    #: The runner uses max(--window, min_window) and stretches a window with none.
    min_window: float = 0.0
    #: whether it belongs to ``--suite quick``.
    quick: bool = True

    def unavailable(self) -> str | None:
        """Why it cannot run here (a missing command), or None."""
        missing = [c for c in self.commands if shutil.which(c) is None]
        return f"missing {', '.join(missing)}" if missing else None

    def prepare(self, cache: Path) -> None:
        """Build what the workload needs once (compile, generate); cached in ``cache``."""

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the session's processes under ``run_dir``; return at once."""
        raise NotImplementedError

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Every metric of :attr:`metrics` over the window (None: no complete unit)."""
        raise NotImplementedError


def now() -> float:
    """The clock of ``start``/``end`` in log records."""
    return time.monotonic()
