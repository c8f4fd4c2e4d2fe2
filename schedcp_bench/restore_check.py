"""Are the session's tasks as they were before any arm ran?

Every arm but the default deploys a policy and rolls it back before the
next window, so each window's figure depends on the rollbacks before it
being exact.  The runner takes a :func:`snapshot` of every thread of the
session's processes after the warm-up, and after every rollback lists the
:func:`differences` of the threads that still run.  Threads born later are
not compared (a driver's units come and go).  One such difference was real:
a rollback gave t1_probe's worker threads the main thread's timer slack,
and every later default window of t1-probe was slower for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from plugins.scheduler import tasks

KNOBS = ("policy", "nice", "slice_ns", "timer_slack_ns", "affinity")
#: differences listed at most per check
LIMIT = 10


@dataclass(frozen=True)
class Thread:
    """What one thread held when the snapshot was taken."""

    start: int
    comm: str
    values: dict[str, Any]


def _comm(tid: int) -> str:
    try:
        with open(f"/proc/{tid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _cgroups(tid: int) -> str | None:
    try:
        with open(f"/proc/{tid}/cgroup", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _values(tid: int) -> dict[str, Any] | None:
    try:
        values = {knob: tasks.read_knob(tid, knob) for knob in KNOBS}
    except (tasks.TaskGone, OSError):
        return None
    values["cgroups"] = _cgroups(tid)
    return values


def _tree(pids: Iterable[int]) -> list[int]:
    """Every thread of ``pids`` and of their descendants, now."""
    out: list[int] = []
    todo = list(pids)
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for tid in tasks.threads(pid):
            out.append(tid)
            todo.extend(tasks.children(tid))
    return out


def snapshot(pids: Iterable[int]) -> dict[int, Thread]:
    """The knobs and cgroups of every thread below ``pids``."""
    out: dict[int, Thread] = {}
    for tid in _tree(pids):
        start = tasks.start_time(tid)
        values = _values(tid)
        if start is not None and values is not None:
            out[tid] = Thread(start, _comm(tid), values)
    return out


def differences(before: dict[int, Thread]) -> list[str]:
    """What differs now from ``before``, for the threads of it still running."""
    out: list[str] = []
    for tid, then in before.items():
        if not tasks.is_alive(tid, then.start):
            continue
        now = _values(tid)
        if now is None:
            continue
        for key, value in then.values.items():
            if now[key] != value:
                shown = "cgroup" if key == "cgroups" else key
                out.append(f"{then.comm} {tid}: {shown} was {_short(value)}, "
                           f"now {_short(now[key])}")
                if len(out) >= LIMIT:
                    return out
    return out


def _short(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 80 else text[:77] + "..."
