"""Run each kernel operation schedcpd needs against another user's process; print JSON.

``capprobe.py TARGET_PID BPF_DIR`` prints ``{operation: "ok" | "error ..."}``.
The test runs it under ``setpriv`` with the capability bounding set of
systemd/schedcpd.service (and with one capability less) to show that set is
both enough and no more than needed.  It goes through the project's own code
where the daemon does (TaskStats, perf stat, the BPF probe catalogue) and
through the same system calls and files as the scheduler plugin otherwise.
Every change is undone before it returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from plugins.scheduler import tasks
from schedcpd.analysis.perfstat import PerfStat
from schedcpd.analysis.taskstats import TaskStatsReader
from schedcpd.probes import ProbeManager


def _nice(pid: int) -> None:
    before = os.getpriority(os.PRIO_PROCESS, pid)
    os.setpriority(os.PRIO_PROCESS, pid, before - 1)  # raising priority needs CAP_SYS_NICE
    os.setpriority(os.PRIO_PROCESS, pid, before)


def _fifo(pid: int) -> None:
    os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))
    os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))


def _slice(pid: int) -> None:
    """sched_setattr through the scheduler plugin's own code (policy, nice and slice).

    The task's attributes are written back unchanged (runtime 0: no custom
    slice); the kernel checks the permission before looking at the values.
    """
    tasks.set_attr(pid, replace(tasks.get_attr(pid), runtime=0))


def _affinity(pid: int) -> None:
    before = os.sched_getaffinity(pid)
    os.sched_setaffinity(pid, {min(before)})
    os.sched_setaffinity(pid, before)


def _rewrite(path: Path) -> None:
    """Write a file's current value back (the permission check is what counts)."""
    path.write_text(path.read_text().strip())


def _autogroup(pid: int) -> None:
    nice = Path(f"/proc/{pid}/autogroup").read_text().split()[-1]
    Path(f"/proc/{pid}/autogroup").write_text(nice)


def _cgroup(pid: int) -> None:
    root = Path("/sys/fs/cgroup/cpu")
    if not (root / "cpu.shares").exists():  # a cgroup v2 host
        root, knob, procs = Path("/sys/fs/cgroup"), "cpu.weight", "cgroup.procs"
    else:
        knob, procs = "cpu.shares", "tasks"
    group = root / f"schedcp-capprobe-{os.getpid()}"
    group.mkdir()
    try:
        (group / knob).write_text("50" if knob == "cpu.weight" else "512")
        (group / procs).write_text(str(pid))
        (root / procs).write_text(str(pid))
    finally:
        group.rmdir()


def _taskstats(pid: int) -> None:
    reader = TaskStatsReader()
    try:
        if not reader.open():
            raise PermissionError("TaskStats family unavailable")
        if reader.tgid(pid) is None:
            raise PermissionError("no TaskStats answer")
    finally:
        reader.close()


def _perf(pid: int) -> None:
    result = asyncio.run(PerfStat().run(pid, None, 0.3, ["task-clock"]))
    if not result["events"].get("task-clock", {}).get("counted"):
        raise PermissionError(f"perf stat counted nothing: {json.dumps(result)[:200]}")


def _bpf(bpf_dir: Path) -> None:
    async def run() -> None:
        mgr = ProbeManager(bpf_dir, max_concurrent=1, max_seconds=1.0, per_caller_per_minute=60)
        try:
            await mgr.run("runqlat", 0.2, "capprobe")
        finally:
            await mgr.close()

    asyncio.run(run())


def main() -> None:
    """Try every operation; print the outcomes as JSON."""
    pid, bpf_dir = int(sys.argv[1]), Path(sys.argv[2])
    ops: dict[str, Callable[[], object]] = {
        "nice": lambda: _nice(pid),
        "sched_fifo": lambda: _fifo(pid),
        "sched_setattr": lambda: _slice(pid),
        "affinity": lambda: _affinity(pid),
        "timer_slack": lambda: _rewrite(Path(f"/proc/{pid}/timerslack_ns")),
        "autogroup": lambda: _autogroup(pid),
        "sysctl": lambda: _rewrite(Path("/proc/sys/kernel/sched_autogroup_enabled")),
        "cgroup": lambda: _cgroup(pid),
        "proc_io": lambda: Path(f"/proc/{pid}/io").read_bytes(),
        "taskstats": lambda: _taskstats(pid),
        "perf_stat": lambda: _perf(pid),
        "bpf_probe": lambda: _bpf(bpf_dir),
    }
    out = {}
    for name, op in ops.items():
        try:
            op()
            out[name] = "ok"
        except Exception as err:  # every failure is a result here
            out[name] = f"error {type(err).__name__}: {err}"[:300]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
