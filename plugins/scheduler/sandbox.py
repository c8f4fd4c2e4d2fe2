"""The dynamic test's synthetic workload: workers, hogs, and their logs.

One worker process per policy group (:mod:`sandbox_worker`): a periodic
2 ms waker for latency groups and for groups that depend on another (they
call their server each period), a server for groups others depend on, a
CPU spinner for the rest; beside them default-priority hogs on all CPUs but
one.  All run in a scratch cgroup of the ``cpu`` controller
(``/schedcp-<owner>``) so that together they weigh on the host like one
task; a group with cgroup knobs leaves it for the plugin's own cgroup while
the policy is applied, and comes back.  Where systemd owns the cgroup tree a
``place`` callback puts each worker (and the hogs) in a transient scope of
its own instead, all in one slice that ``release`` stops at the end: no
cgroup is made behind systemd's back, and each group's worker is a whole
unit the policy's cgroup knobs can act on (:mod:`plugins.scheduler.unit_groups`).

Each worker appends a record per completed step to its own log;
:meth:`Sandbox.window` cuts the logs into windows of the verifier's clock.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugins.scheduler import cgroups as cgroups_mod
from plugins.scheduler.sandbox_worker import PERIOD_NS, RECORD
from schedcpd.plugin_api import procfs

WORKER = Path(__file__).with_name("sandbox_worker.py")
READY_TIMEOUT = 15.0

_LOGGER = logging.getLogger(__name__)


class SandboxError(Exception):
    """The sandbox could not be set up or lost a worker: no verdict is possible."""


def groups_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy's ``[[group]]`` tables (malformed entries left out)."""
    groups = doc.get("group", [])
    return [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []


def is_latency(group: dict[str, Any]) -> bool:
    """Whether the group favours latency (FIFO/RR, negative nice, a short slice)."""
    task = group.get("task", {})
    return (
        task.get("policy") in ("fifo", "rr")
        or task.get("nice", 0) < 0
        or (isinstance(task.get("slice_us"), int) and task["slice_us"] <= 1000)
    )


def role(group: dict[str, Any], groups: list[dict[str, Any]]) -> str:
    """The worker that stands for ``group``: ``server``, ``periodic`` or ``spin``."""
    if any(group.get("name") in g.get("depends_on", []) for g in groups):
        return "server"
    # A group that depends on another is a client: it calls its server each period.
    return "periodic" if is_latency(group) or group.get("depends_on") else "spin"


@dataclass
class WindowStats:
    """What one worker did in one window."""

    completions: int = 0
    wake_us: list[float] = field(default_factory=list)
    response_us: list[float] = field(default_factory=list)
    # How long the worker had been without a completed step when the window
    # closed: a lower bound on a step still in flight (a censored sample).
    pending_us: float = 0.0


def metric(stats: WindowStats, name: str, has_server: bool) -> float | None:
    """A guard metric of one window (microseconds), or None without samples.

    ``wake_p99_us`` and ``response_p99_us`` count the step still in flight
    at the window's end as one more sample, of the time it has waited so
    far beyond its period: a worker that is stuck shows it even though the
    stuck step never completes inside the window.
    """
    if name == "wake_p99_us":
        samples = stats.wake_us
    elif name == "response_p99_us":
        if not has_server:
            return None
        samples = stats.response_us
    else:
        raise ValueError(f"unknown metric {name!r}")
    overdue = stats.pending_us - PERIOD_NS / 1000
    if overdue > 0:
        samples = [*samples, overdue]
    return report(WindowStats(wake_us=samples))["wake_p99_us"]


class WorkerLog:
    """The records one worker appended to its log, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._records: list[tuple[int, int, float, float]] = []

    def records(self) -> list[tuple[int, int, float, float]]:
        """Every completed step so far: (begin_ns, end_ns, wake_us, response_us)."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        whole = len(data) - len(data) % RECORD.size
        self._records.extend(r for r in RECORD.iter_unpack(data[:whole]) if r[1] > 0)
        self._offset += whole
        return self._records

    def window(self, begin_ns: int, end_ns: int) -> WindowStats:
        """The steps that both began and ended inside [begin, end)."""
        stats = WindowStats()
        last = begin_ns
        for begin, end, wake, response in self.records():
            if begin_ns < end < end_ns:
                last = max(last, end)
            if begin < begin_ns or end >= end_ns:
                continue
            stats.completions += 1
            if wake == wake:  # not NaN
                stats.wake_us.append(wake)
            if response == response:
                stats.response_us.append(response)
        stats.pending_us = (end_ns - last) / 1000
        return stats


def report(stats: WindowStats) -> dict[str, float | int | None]:
    """A window as ``iterations`` and p50/p99 wake and response times (us)."""
    def pct(values: list[float], q: float) -> float | None:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None
    return {"iterations": stats.completions,
            "wake_p50_us": pct(stats.wake_us, 0.5), "wake_p99_us": pct(stats.wake_us, 0.99),
            "response_p50_us": pct(stats.response_us, 0.5),
            "response_p99_us": pct(stats.response_us, 0.99)}


def measure(path: Path, seconds: float) -> dict[str, float | int | None]:
    """What the worker logging to ``path`` did over the next ``seconds`` (see :func:`report`)."""
    begin = time.monotonic_ns()
    time.sleep(seconds)
    return report(WorkerLog(path).window(begin, time.monotonic_ns()))


class Sandbox:
    """The synthetic workload of one dynamic test: processes the test owns."""

    def __init__(self, doc: dict[str, Any], owner: str,
                 place: Callable[[str, int], None] | None = None,
                 release: Callable[[], None] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="schedcp-verify-"))
        self.groups = groups_of(doc)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.roles = {g["name"]: role(g, self.groups) for g in self.groups}
        self.clients_of: dict[str, str] = {}
        self._logs: dict[str, WorkerLog] = {}
        self.scratch: Path | None = None
        self.scratch_error = ""
        # place(role, pid): ``role`` is the group name, or "hogs".
        self.place = place
        # release(): after the processes are gone, what ``place`` made (slices)
        self.release = release
        cpu = cgroups_mod.detect_hierarchies().get("cpu")
        if place is not None:
            pass  # systemd's scopes stand in for the scratch cgroup
        elif cpu is not None:
            path = cpu.path(f"/schedcp-{owner}")
            try:
                path.mkdir()
                self.scratch = path
            except OSError as err:
                self.scratch_error = f"cannot create a scratch cgroup {path}: {err}"
        else:
            self.scratch_error = "no cpu cgroup controller"

    @property
    def hogs(self) -> int:
        """How many CPU hogs run beside the workers."""
        return len(self.procs) - len(self.workers)

    def log(self, name: str) -> Path:
        """The record log of group ``name``'s worker."""
        return self.dir / f"{name}.log"

    def start(self) -> None:
        """Start hogs and workers, and wait until every worker is set up."""
        fifos: dict[str, Path] = {}
        for group in self.groups:
            if self.roles[group["name"]] == "server":
                req, rep = self.dir / f"{group['name']}.req", self.dir / f"{group['name']}.rep"
                os.mkfifo(req)
                os.mkfifo(rep)
                fifos[group["name"]] = req
        # Contention on all CPUs but one: enough to expose a latency regression,
        # while a deprioritised group still finds the idle time it is meant to use.
        for _ in range(max(1, (os.cpu_count() or 1) - 1)):
            self._spawn(None, ["spin"])
        for group in self.groups:
            name, kind = group["name"], self.roles[group["name"]]
            args = [kind]
            if kind == "server":
                args += [str(fifos[name]), str(fifos[name].with_suffix(".rep"))]
            deps = [d for d in group.get("depends_on", []) if d in fifos]
            if kind == "periodic" and deps:
                args += [str(fifos[deps[0]]), str(fifos[deps[0]].with_suffix(".rep"))]
                self.clients_of[name] = deps[0]
            self.workers[name] = self._spawn(name, args)
        self._wait_ready()

    def _spawn(self, name: str | None, args: list[str]) -> subprocess.Popen[bytes]:
        log = str(self.log(name)) if name is not None else os.devnull
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), log, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "SCHEDCP_SANDBOX_PARENT": str(os.getpid())},
        )
        self.procs.append(proc)
        if self.place is not None:
            try:
                self.place(name if name is not None else "hogs", proc.pid)
            except Exception as err:  # SystemdError, a timeout: no verdict without placement
                raise SandboxError(f"cannot place sandbox process {proc.pid}: {err}") from err
        elif self.scratch is not None:
            (self.scratch / "cgroup.procs").write_text(str(proc.pid))
        return proc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = set(self.workers)
        while waiting:
            self.check_alive()
            waiting = {n for n in waiting
                       if not self.log(n).exists() or self.log(n).stat().st_size < RECORD.size}
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise SandboxError(f"worker(s) {sorted(waiting)} not set up after "
                                   f"{READY_TIMEOUT:.0f} s")
            time.sleep(0.01)

    def check_alive(self) -> None:
        """Raise :class:`SandboxError` if a worker or hog has exited."""
        for proc in self.procs:
            if proc.poll() is not None:
                names = [n for n, p in self.workers.items() if p is proc] or ["a hog"]
                raise SandboxError(f"sandbox process {names[0]} (pid {proc.pid}) exited "
                                   f"with status {proc.returncode}")

    def window(self, begin_ns: int, end_ns: int) -> dict[str, WindowStats]:
        """Each worker's steps that both began and ended inside [begin, end)."""
        for name in self.workers:
            if name not in self._logs:
                self._logs[name] = WorkerLog(self.log(name))
        return {name: self._logs[name].window(begin_ns, end_ns) for name in self.workers}

    def cpu_seconds(self) -> float:
        """CPU time the sandbox's processes have used so far (utime + stime)."""
        total = 0
        for proc in self.procs:
            stat = procfs.read_pid_stat(proc.pid)
            if stat is not None:
                total += stat.utime + stat.stime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Kill every process, remove the logs and the scratch cgroup."""
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()
        if self.release is not None:
            try:
                self.release()
            except Exception as err:  # teardown reports it, never masks the verdict
                _LOGGER.warning("verifier sandbox: cannot release its units: %s", err)
        if self.scratch is not None:
            for _ in range(50):  # the kernel may take a moment to let go of the tasks
                try:
                    self.scratch.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
