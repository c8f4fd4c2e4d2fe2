"""Helpers for the scheduler plugin tests (processes, snapshots, policies)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from plugins.scheduler import tasks
from plugins.scheduler.plugin import SchedulerPlugin
from schedcpd.hookspecs import PluginContext
from schedcpd.journal import Journal
from tests.harness import Procs, wait_until


def make_plugin(
    journal: Journal, state_dir: Path, cgroup_parent: str, **config: Any
) -> SchedulerPlugin:
    plugin = SchedulerPlugin()
    plugin.schedcp_startup(
        PluginContext(
            state_dir=state_dir,
            config={"cgroup_parent": cgroup_parent, **config},
            journal=journal,
        )
    )
    return plugin


class Spawner:
    """Starts processes for a test and kills them all at the end (a :class:`Procs`).

    They stay in the test's session (and autogroup) unless asked otherwise:
    the scheduler tests compare how they share a CPU.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.owned = Procs("schedcp-sched-", new_session=False)
        self.pids: list[int] = []  # grandchildren (a Forker's), killed at the end

    def sleeper(self, comm: str | None = None) -> subprocess.Popen[bytes]:
        """A sleeping process, optionally under a unique comm (a copy of sleep)."""
        binary = shutil.which("sleep") or "/bin/sleep"
        if comm is not None:
            copy = self.tmp / comm
            if not copy.exists():
                shutil.copy(binary, copy)
            binary = str(copy)
        proc = self.owned.start([binary, "300"])
        wait_exec(proc.pid, Path(binary).name)
        return proc

    def own_session(self) -> subprocess.Popen[bytes]:
        """A sleeping process in a new session, hence its own autogroup."""
        proc = self.owned.start([shutil.which("sleep") or "/bin/sleep", "300"], new_session=True)
        wait_exec(proc.pid, "sleep")
        return proc

    def threaded(self, nthreads: int = 3) -> subprocess.Popen[bytes]:
        """A Python process with ``nthreads`` extra sleeping threads."""
        code = (
            "import threading, time\n"
            f"for _ in range({nthreads}):\n"
            "    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n"
        )
        proc = self.owned.start([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        return proc

    def forker(self) -> Forker:
        """A process that forks children when told (they are killed at the end too)."""
        proc = self.owned.start([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        forker = Forker(proc, self.pids)
        assert forker.say("") == b"ready"
        return forker

    def close(self) -> None:
        self.owned.stop()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


FORKER = """
import subprocess, sys
children = []
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "churn":
        for _ in range(50):
            subprocess.run(["true"])
        print("done", flush=True)
        continue
    children.append(subprocess.Popen(["sleep", "300"]))
    print(children[-1].pid, flush=True)
"""


class Forker:
    """A Python process that forks on request: ``fork`` one long child, ``churn`` 50 short ones."""

    def __init__(self, proc: subprocess.Popen[bytes], children: list[int]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.children = children

    def say(self, line: str) -> bytes:
        """Send ``line`` (nothing for the start-up greeting) and read the answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def fork(self) -> int:
        """Fork a ``sleep 300`` child; its pid."""
        child = int(self.say("fork"))
        self.children.append(child)
        return child

    def churn(self) -> None:
        """Fork and wait for 50 ``true`` children in a row."""
        assert self.say("churn") == b"done"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def wait_exec(pid: int, comm: str, timeout: float = 5.0) -> None:
    """Wait until ``pid`` has exec'd the program named ``comm``."""
    wait_until(lambda: _comm(pid) == comm[:15], timeout, f"process {pid} becomes {comm}",
               interval=0.005)


def snapshot(pid: int) -> dict[str, Any]:
    """Every knob of every thread of ``pid`` plus its cgroups: what restore must bring back."""
    result: dict[str, Any] = {}
    for tid in tasks.threads(pid):
        values = {knob: tasks.read_knob(tid, knob) for knob in tasks.TASK_KNOBS}
        values["cgroup"] = Path(f"/proc/{tid}/cgroup").read_text()
        result[str(tid)] = values
    return result


def unique_comm() -> str:
    return f"sct{uuid.uuid4().hex[:10]}"


def policy_doc(
    groups: list[dict[str, Any]], name: str = "test-policy", **extra: Any
) -> dict[str, Any]:
    return {"policy": {"name": name, "description": "test"}, "group": groups, **extra}


def apply(
    plugin: SchedulerPlugin, doc: dict[str, Any], scope: dict[str, Any], dry_run: bool = False
) -> dict[str, Any]:
    result = plugin.schedcp_apply("scheduler", doc, scope, dry_run)
    assert result is not None
    return result


def restore(plugin: SchedulerPlugin, scope: dict[str, Any]) -> dict[str, Any]:
    result = plugin.schedcp_restore("scheduler", scope)
    assert result is not None
    return result


def state(plugin: SchedulerPlugin) -> dict[str, Any]:
    result = plugin.schedcp_state("scheduler")
    assert result is not None
    return result
