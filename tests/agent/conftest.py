"""Fixtures for the agent tests: schedcpd on a private bus, the agent CLI, workloads.

The agent runs as it does in production: an unprivileged user (the test user
``schedcp-test``, a member of group ``schedcp``) that the daemon's
configuration grants observe, submit, verify and deploy -- the ``config``
way of docs/agent.md, "Authorization".  Only the test itself is root (it
starts the workloads and reads their scheduling state).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import pytest

from plugins.scheduler import sandbox
from tests.conftest import TEST_GROUP, TEST_USER
from tests.harness import FAST_WINDOWS, ROOT, PrivateBus, Procs, SchedcpdProcess, run_as

WORKLOADS = Path(__file__).parent / "workloads.py"
T = TypeVar("T")

# Fast windows (as tests/deploy) and a lenient breaker: the breaker itself is
# tested in tests/deploy; on this shared host (load average up to ~150 while
# other suites run) its latency and throughput guards would revert on noise,
# which is not what these tests examine.  The analysis window is short so a
# summary soon covers the test's workload.
AGENT_CONFIG = f"""[metrics]
enabled = false
[authorization]
polkit = "never"
group = "{TEST_GROUP}"
group_actions = ["org.schedcp.observe", "org.schedcp.submit", "org.schedcp.verify",
                 "org.schedcp.deploy"]
[repository]
agent_user = "{TEST_USER}"
[analysis]
rate_hz = 4.0
window_seconds = 5.0
top_n = 32
{FAST_WINDOWS}[breaker]
threshold = 50.0
absolute_floor_us = 100000.0
throughput_floor = 0.01
interactive_share = 0.01
stall_seconds = 20.0
"""


@pytest.fixture(scope="module")
def agent_daemon(test_users: dict[str, int]) -> Iterator[SchedcpdProcess]:
    """schedcpd with fast settings on a private bus of this module's own."""
    with PrivateBus() as bus, SchedcpdProcess(bus.address, AGENT_CONFIG) as proc:
        yield proc


@pytest.fixture(scope="session")
def agent_uid(test_users: dict[str, int]) -> int:
    """The unprivileged user the agent runs as (granted verify and deploy by AGENT_CONFIG)."""
    return test_users["member"]


def _world_readable(path: Path) -> bool:
    """Whether other users can read ``path`` (and reach it)."""
    parts = [path, *path.parents]
    return bool(path.stat().st_mode & 0o004) and all(p.stat().st_mode & 0o001 for p in parts)


def agent_cwd() -> Path:
    """Where the agent runs: the checkout if its user can read it, else ``/``.

    From the checkout ``python -m schedcp_agent`` runs the code under test; a
    checkout in a 0700 directory falls back to the installed package.
    """
    return ROOT if _world_readable(ROOT) else Path("/")


def user_dir(uid: int, prefix: str = "schedcp-agent-") -> Path:
    """A fresh directory owned by ``uid`` (for transcripts, a command's files)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(path, uid, -1)
    return path


def run_agent(address: str, args: list[str], uid: int, env: dict[str, str] | None = None,
              timeout: float = 150.0) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``schedcp-agent optimize --json`` as ``uid``; (exit status, report, stderr)."""
    argv = [sys.executable, "-m", "schedcp_agent", "optimize", "--bus", address, "--json",
            "--observe-seconds", "3", *args]
    out = run_as(uid, argv, env={**os.environ, **(env or {})}, cwd=agent_cwd(),
                 timeout=timeout)
    report = None
    if out.stdout.strip().startswith("{"):
        report = json.loads(out.stdout)
    return out.returncode, report, out.stderr


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs("schedcp-agent-test-")
    try:
        yield p
    finally:
        p.stop()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Sampler(Generic[T]):
    """Reads ``read(pid)`` for each pid of ``pids()`` every 50 ms, in a thread, while entered.

    :attr:`seen` holds every value read, by pid: how a test sees that a
    deployment was applied to the targets, whatever the deployment's fate
    afterwards (the agent may revert it at the end).  A pid ``read`` fails on
    with one of ``errors`` (it exited) is passed over that round.
    """

    def __init__(self, pids: Callable[[], Iterable[int]], read: Callable[[int], T],
                 errors: tuple[type[Exception], ...] = (OSError,)) -> None:
        self._pids, self._read, self._errors = pids, read, errors
        self.seen: defaultdict[int, set[T]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self._pids():
                try:
                    value = self._read(pid)
                except self._errors:
                    continue
                self.seen[pid].add(value)


def _knobs(pid: int) -> tuple[int, int, str]:
    return os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid), cpu_cgroup(pid)


class KnobWatcher(Sampler[tuple[int, int, str]]):
    """Samples the scheduling policy, nice and cpu cgroup of processes (:class:`Sampler`)."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        super().__init__(pids, _knobs)

    def saw(self, pid: int, policy: int | None = None, nice: int | None = None,
            cgroup_part: str | None = None) -> bool:
        """Whether ``pid`` was seen with all the given values at once."""
        return any((policy is None or p == policy) and (nice is None or n == nice)
                   and (cgroup_part is None or cgroup_part in c)
                   for p, n, c in self.seen.get(pid, set()))


def probe_p99(probe: subprocess.Popen[bytes], directory: Path, seconds: float) -> float | None:
    """The periodic probe's wake-up p99 (us) over the next ``seconds``, from its step log."""
    value = sandbox.measure(directory / f"r-{probe.pid}", seconds)["wake_p99_us"]
    return float(value) if value is not None else None


def cpu_cgroup(pid: int) -> str:
    """The path of ``pid``'s cgroup in the hierarchy with the cpu controller."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return ""


def cgroup_exists(path: str) -> bool:
    """Whether the v1 cpu cgroup ``path`` exists."""
    return any((Path(m) / path.lstrip("/")).is_dir()
               for m in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"))


def cgroup_shares(path: str) -> int | None:
    """cpu.shares of a v1 cpu cgroup path (None if unreadable)."""
    for mount in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
        f = Path(mount + path) / "cpu.shares"
        if f.exists():
            return int(f.read_text())
    return None
