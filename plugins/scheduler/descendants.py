"""After a restore: undo what a restored task's unjournaled descendants inherited.

A forked child inherits its parent's scheduling attributes and its cgroup
(per thread on v1).  The applier journals the children of a managed tree
``inherit_delay`` after their fork, so a restore covers those.  Some it
never sees: children forked while the restore runs (between its last tick
and the parent's own restore; a make -j forks dozens a second), and after a
crash the ones forked in the last ``inherit_delay`` before it or while the
daemon was down.  Left alone they keep our values (SCHED_BATCH, a slice, a
place in our cgroup, which then cannot be removed).

:func:`sweep` runs between the restore of the task entries and that of the
cgroups: it walks the process tree below every task whose entries were just
restored and, for each descendant (or sibling thread) with no journal entry
of its own, writes back the ancestor's prior for every knob that still
holds exactly the value we had set.  A descendant that changed a value
itself keeps its own; one in our cgroup goes back where its ancestor came
from, so the directory can be removed.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from plugins.scheduler import tasks
from plugins.scheduler.actuator import SUBSYSTEM, Actuator, Gone, task_key
from schedcpd.journal import APPLIED, OVERRIDDEN, PENDING, RESTORED, SKIPPED

_LOGGER = logging.getLogger(__name__)

# knob -> (journal kind, our value, the prior) of one restored task
Values = dict[str, tuple[str, Any, Any]]

ANY_STATE = (PENDING, APPLIED, OVERRIDDEN, RESTORED, SKIPPED)
LIMIT = 10_000  # tasks visited at most, against a tree that forks faster than we walk


def _restored_roots(results: list[dict[str, Any]]) -> dict[int, Values]:
    """Live tasks whose entries were just restored, with what we had set on them."""
    roots: dict[int, Values] = {}
    for r in results:
        if r["outcome"] != "restored" or not r["key"].startswith("task:"):
            continue
        _, tid, start, knob = r["key"].split(":")
        if knob == "autogroup_nice" or not tasks.is_alive(int(tid), int(start)):
            continue  # autogroup nice is the session's: restored through the root itself
        roots.setdefault(int(tid), {})[knob] = (r["kind"], r["new"], r["prior"])
    return roots


def _journaled(actuator: Actuator, tid: int, start: int) -> bool:
    return any(int(e.key.split(":")[2]) == start for e in actuator.journal.for_key_prefix(
        f"task:{tid}:", states=ANY_STATE, subsystem=SUBSYSTEM))


def _give_back(actuator: Actuator, tid: int, start: int, values: Values) -> list[str]:
    """Write the priors of the knobs ``tid`` still holds our value for; the knobs written."""
    written: list[str] = []
    for knob, (kind, ours, prior) in values.items():
        key = task_key(tid, start, knob)
        try:
            if not actuator.same(kind, actuator.read(kind, key), ours):
                continue  # changed since it inherited it: its own now
            actuator.write(kind, key, prior)
        except Gone:
            return written
        except (OSError, ValueError) as exc:
            _LOGGER.warning("descendant %s keeps inherited %s: %s", tid, knob, exc)
            continue
        written.append(knob)
    return written


def sweep(actuator: Actuator, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give unjournaled descendants of the restored tasks their ancestors' priors.

    ``results`` are :meth:`Actuator.restore_entry` results.  Returns one
    record per task given something back: ``{"tid", "ancestor", "knobs"}``.
    """
    roots = _restored_roots(results)
    queue: deque[tuple[int, int, Values]] = deque()
    processes: dict[int, list[int]] = {}
    for tid, values in roots.items():
        tgid = tasks.tgid_of(tid)
        if tgid is not None and tgid not in processes:
            processes[tgid] = tasks.threads(tgid)
        # New threads of a restored process inherited from the thread that made them.
        queue.extend((t, tid, values) for t in processes.get(tgid or 0, []) if t not in roots)
        queue.append((tid, tid, values))
    done: list[dict[str, Any]] = []
    visited: set[int] = set()
    while queue and len(visited) < LIMIT:
        tid, ancestor, values = queue.popleft()
        if tid in visited:
            continue  # a thread reached from two roots of its process
        visited.add(tid)
        if tid not in roots:
            start = tasks.start_time(tid)
            if start is None or _journaled(actuator, tid, start):
                continue
            knobs = _give_back(actuator, tid, start, values)
            if knobs:
                done.append({"tid": tid, "ancestor": ancestor, "knobs": knobs})
        # Its children (forked before it got the priors back) inherited ours.
        for child in tasks.children(tid):
            queue.extend((t, ancestor, values) for t in tasks.threads(child) if t not in visited)
    if done:
        _LOGGER.info("restore: %d task(s) forked from restored tasks without journal entries "
                     "(during the restore, or while we were down) given their ancestors' "
                     "values back: %s", len(done), [d["tid"] for d in done[:20]])
    return done
