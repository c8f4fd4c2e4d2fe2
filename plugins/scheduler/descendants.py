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

Only tasks born after we changed their ancestor can have inherited our
values.  A thread or child that already existed then was seen by the
applier: it has entries of its own, or it needed none because it already
held the policy's value (a probe thread that set its own timer slack to
1 ns).  Such a task is left alone, and so is everything below it: what it
holds is its own.  An ancestor whose entries were themselves inherited at
fork had our values from birth, so everything below it is swept.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from plugins.scheduler import tasks
from plugins.scheduler.actuator import SUBSYSTEM, Actuator, Gone, task_key
from schedcpd.plugin_api import APPLIED, OVERRIDDEN, PENDING, RESTORED, SKIPPED

_LOGGER = logging.getLogger(__name__)

# knob -> (journal kind, our value, the prior) of one restored task
Values = dict[str, tuple[str, Any, Any]]

ANY_STATE = (PENDING, APPLIED, OVERRIDDEN, RESTORED, SKIPPED)
LIMIT = 10_000  # tasks visited at most, against a tree that forks faster than we walk
# A task born this long before its ancestor's first entry existed when we applied
# (start times come in 10 ms ticks; nearer than this, it is swept as before).
EXISTED_MARGIN = 0.05


@dataclass
class Root:
    """A task whose entries were just restored: what we had set, and since when."""

    values: Values = field(default_factory=dict)
    #: wall time of its oldest restored entry
    since: float = math.inf
    #: it inherited our values at its fork (had them from birth)
    inherited: bool = False

    def existed_before(self, start: int) -> bool:
        """Whether a task that started at ``start`` (ticks) was there when we changed it."""
        return (not self.inherited
                and tasks.started_at(start) < self.since - EXISTED_MARGIN)


def _restored_roots(results: list[dict[str, Any]]) -> dict[int, Root]:
    """Live tasks whose entries were just restored, with what we had set on them."""
    roots: dict[int, Root] = {}
    for r in results:
        if r["outcome"] != "restored" or not r["key"].startswith("task:"):
            continue
        _, tid, start, knob = r["key"].split(":")
        if knob == "autogroup_nice" or not tasks.is_alive(int(tid), int(start)):
            continue  # autogroup nice is the session's: restored through the root itself
        root = roots.setdefault(int(tid), Root())
        root.values[knob] = (r["kind"], r["new"], r["prior"])
        root.since = min(root.since, r["time"])
        root.inherited = root.inherited or r["inherited"]
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
    queue: deque[tuple[int, int, Root]] = deque()
    processes: dict[int, list[int]] = {}
    for tid, root in roots.items():
        tgid = tasks.tgid_of(tid)
        if tgid is not None and tgid not in processes:
            processes[tgid] = tasks.threads(tgid)
        # New threads of a restored process inherited from the thread that made them.
        queue.extend((t, tid, root) for t in processes.get(tgid or 0, []) if t not in roots)
        queue.append((tid, tid, root))
    done: list[dict[str, Any]] = []
    visited: set[int] = set()
    while queue and len(visited) < LIMIT:
        tid, ancestor, root = queue.popleft()
        if tid in visited:
            continue  # a thread reached from two roots of its process
        visited.add(tid)
        if tid not in roots:
            start = tasks.start_time(tid)
            if (start is None or root.existed_before(start)
                    or _journaled(actuator, tid, start)):
                continue
            knobs = _give_back(actuator, tid, start, root.values)
            if knobs:
                done.append({"tid": tid, "ancestor": ancestor, "knobs": knobs})
        # Its children (forked before it got the priors back) inherited ours.
        for child in tasks.children(tid):
            queue.extend((t, ancestor, root) for t in tasks.threads(child) if t not in visited)
    if done:
        _LOGGER.info("restore: %d task(s) forked from restored tasks without journal entries "
                     "(during the restore, or while we were down) given their ancestors' "
                     "values back: %s", len(done), [d["tid"] for d in done[:20]])
    return done
