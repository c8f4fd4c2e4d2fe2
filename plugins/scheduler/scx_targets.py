"""The targets of a T2 (sched_ext) policy, and moving their tasks to SCHED_EXT.

A T2 policy may name target processes as T1 policies do, with
``[[group]]`` tables (``name``, ``match``; no knobs: the scheduler is the
knob) and ``[[guard]]`` tables (see docs/sched_ext.md)::

    [scx]
    scheduler = "vtime"
    switch = "all"          # or "partial": only the targets, ever

    [[group]]
    name = "service"
    match = { comm = ["nginx"] }

With targets, the deployment's canary attaches the scheduler in
partial-switch mode (``SCX_OPS_SWITCH_PARTIAL``: only tasks whose policy is
``SCHED_EXT`` run on it) and moves every thread of the targets to
``SCHED_EXT`` (:class:`TaskMover`); after probation it widens to the whole
machine (``switch = "all"``: the loader re-attaches without the flag) or
stays on the targets (``switch = "partial"``).

Crash safety: each thread's scheduling attributes (policy, priority, nice,
flags, slice) are journaled (kind :data:`TASK_KIND`) *before* the thread is
switched; restore (rollback, breaker trip, start-up after a crash) gives
each thread still alive its attributes back.  Threads a target created
while it ran in ``SCHED_EXT`` inherited that policy: :meth:`TaskMover.sweep`
gives them their process's journaled policy, or ``SCHED_OTHER`` (keeping
their nice value) when their process was never journaled.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from plugins.scheduler import policy as policy_mod
from plugins.scheduler import tasks
from plugins.scheduler.targets import Selector, scan
from schedcpd.plugin_api import Journal, JournalEntry

_LOGGER = logging.getLogger(__name__)

TASK_KIND = "scx_task"
GROUP_KEYS = {"name", "description", "match"}
SWITCH_MODES = ("all", "partial")
# Only fair-class threads are moved: a real-time or deadline thread keeps its class.
MOVABLE = (tasks.SCHED_OTHER, tasks.SCHED_BATCH, tasks.SCHED_IDLE)


def validate(doc: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Findings for ``[[group]]``, ``[[guard]]`` and ``scx.switch`` of a T2 policy."""
    check = policy_mod._Checker(source)
    switch = doc.get("scx", {}).get("switch", "all")
    if switch not in SWITCH_MODES:
        check.error("range", "scx.switch", f"must be one of {', '.join(SWITCH_MODES)}")
    names, _ = policy_mod._check_groups(check, doc, GROUP_KEYS)
    if switch == "partial" and not doc.get("group"):
        check.error("missing", "group", "scx.switch = \"partial\" needs [[group]] targets")
    policy_mod._check_guards(check, doc, names)
    return check.findings


def switch_mode(doc: dict[str, Any]) -> str:
    """``all`` (widen after the canary) or ``partial`` (stay on the targets)."""
    return str(doc.get("scx", {}).get("switch", "all"))


def resolve(doc: dict[str, Any]) -> dict[str, list[int]]:
    """The processes each group matches now."""
    out: dict[str, list[int]] = {}
    for group in doc.get("group", []):
        if isinstance(group, dict) and isinstance(group.get("match"), dict):
            out[str(group["name"])] = scan(Selector.from_table(group["match"]))
    return out


def policy_of(tid: int) -> int | None:
    """The scheduling policy of thread ``tid`` (None when it is gone)."""
    try:
        return tasks.get_attr(tid).policy
    except (tasks.TaskGone, OSError):
        return None


def _prior(attr: tasks.Attr, pid: int, tid: int, start: int) -> dict[str, Any]:
    return {"policy": attr.policy, "priority": attr.priority, "nice": attr.nice,
            "flags": attr.flags, "runtime": attr.runtime, "pid": pid, "start": start}


class TaskMover:
    """Moves target threads to SCHED_EXT and back, journaling each one first."""

    def __init__(self, journal: Journal, subsystem: str) -> None:
        self.journal = journal
        self.subsystem = subsystem

    def move(self, owner: str, pids: list[int]) -> dict[str, int]:
        """Every thread of ``pids`` to SCHED_EXT; counts of moved/kept/gone threads."""
        counts = {"moved": 0, "kept": 0, "gone": 0}
        for pid in pids:
            for tid in tasks.threads(pid):
                start = tasks.start_time(tid)
                try:
                    attr = tasks.get_attr(tid)
                except (tasks.TaskGone, OSError):
                    counts["gone"] += 1
                    continue
                if start is None or attr.policy not in MOVABLE:
                    counts["kept"] += 1  # real-time, deadline, or already SCHED_EXT
                    continue
                entry = self.journal.record(owner, TASK_KIND, f"{TASK_KIND}:{tid}",
                                            _prior(attr, pid, tid, start),
                                            {"policy": tasks.SCHED_EXT},
                                            subsystem=self.subsystem)
                try:
                    tasks.set_attr(tid, replace(attr, policy=tasks.SCHED_EXT, priority=0,
                                                runtime=0))
                except tasks.TaskGone as err:
                    self.journal.mark_skipped(entry, f"not switched: {err}")
                    counts["gone"] += 1
                    continue
                except OSError as err:  # the kernel refuses SCHED_EXT: no canary possible
                    self.journal.mark_skipped(entry, f"not switched: {err}")
                    raise OSError(err.errno, f"cannot move thread {tid} of process {pid} to "
                                  f"SCHED_EXT: {err.strerror}") from err
                self.journal.mark_applied(entry)
                counts["moved"] += 1
        return counts

    def restore(self, entry: JournalEntry) -> str:
        """Give one journaled thread its attributes back; record the outcome."""
        prior = entry.prior if isinstance(entry.prior, dict) else {}
        tid = int(entry.key.rsplit(":", 1)[1])
        start = prior.get("start")
        if not isinstance(start, int) or not tasks.is_alive(tid, start):
            self.journal.mark_skipped(entry.id, "the thread exited")
            return "gone"
        current = policy_of(tid)
        if current != tasks.SCHED_EXT:
            self.journal.mark_overridden(entry.id, f"its policy is {current} now, not "
                                         "SCHED_EXT: someone else changed it; left alone")
            return "overridden"
        try:
            self._set(tid, prior)
        except (tasks.TaskGone, OSError) as err:
            self.journal.mark_skipped(entry.id, f"not restored: {err}")
            return "gone"
        self.journal.mark_restored(entry.id, f"policy {prior.get('policy')} back")
        return "restored"

    @staticmethod
    def _set(tid: int, prior: dict[str, Any]) -> None:
        attr = tasks.Attr(policy=int(prior.get("policy", tasks.SCHED_OTHER)),
                          flags=int(prior.get("flags", 0)), nice=int(prior.get("nice", 0)),
                          priority=int(prior.get("priority", 0)),
                          runtime=int(prior.get("runtime", 0)))
        tasks.set_attr(tid, replace(attr, runtime=tasks._slice_arg(attr)))

    def sweep(self, journaled: dict[int, dict[str, Any]]) -> int:
        """Threads still in SCHED_EXT once no scheduler of ours runs: back to their class.

        ``journaled`` maps a process id to a journaled prior of one of its
        threads (a thread its process created later gets that policy);
        other threads in SCHED_EXT get SCHED_OTHER with their nice value.
        Returns how many threads were changed.
        """
        changed = 0
        for pid in tasks_of_proc():
            for tid in tasks.threads(pid):
                if policy_of(tid) != tasks.SCHED_EXT:
                    continue
                try:
                    nice = tasks.get_attr(tid).nice
                    prior = journaled.get(pid) or {"policy": tasks.SCHED_OTHER, "nice": nice}
                    self._set(tid, {**prior, "nice": nice})
                    changed += 1
                except (tasks.TaskGone, OSError) as err:
                    _LOGGER.debug("thread %d left in SCHED_EXT: %s", tid, err)
        return changed


def tasks_of_proc() -> list[int]:
    """Every process id in /proc."""
    return [int(n) for n in os.listdir(tasks.PROC) if n.isdigit()]
