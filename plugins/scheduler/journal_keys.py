"""What the scheduler's journal keys stand for: the keys of a process, and their names.

``Explain`` asks which journal rows concern a process, and how to name a
row's target for an operator.  The keys are this plugin's own format:

- ``task:<tid>:<start>:<knob>`` — a per-task knob, or ``cgroup.<controller>``
  for the task's cgroup membership (value ``{"path": <cgroup>}``);
- ``scx_task:<tid>`` — a task switched to a sched_ext scheduler;
- ``cgroup_dir:<controller>:<path>`` — a cgroup this plugin created;
- ``cgroup_value:<controller>:<path>:<file>`` — a value in such a cgroup;
- ``sysctl:<name>``, ``debugfs:<path>``, ``scx_loader:<owner>``.
"""

from __future__ import annotations

from typing import Any

from plugins.scheduler import tasks
from plugins.scheduler.actuator import KIND_MEMBERSHIP, SUBSYSTEM
from schedcpd.plugin_api import STATES, Journal

MEMBERSHIP_PREFIX = "cgroup."


def keys_of_process(journal: Journal, pid: int) -> list[str]:
    """Key prefixes (ending in ``:``) and exact keys of what concerns ``pid`` now.

    Every thread of this incarnation (its start time is in the key, so an
    earlier process with the same pid is not matched), and the values of
    each cgroup the journal moved one of those threads into.
    """
    keys: list[str] = []
    cgroups: set[str] = set()
    for tid in tasks.threads(pid):
        start = tasks.start_time(tid)
        if start is None:
            continue  # exited while we looked
        prefix = f"task:{tid}:{start}:"
        keys += [prefix, f"scx_task:{tid}"]
        for entry in journal.for_key_prefix(prefix, states=STATES, subsystem=SUBSYSTEM):
            knob = entry.key.rsplit(":", 1)[-1]
            if entry.kind == KIND_MEMBERSHIP and knob.startswith(MEMBERSHIP_PREFIX) \
                    and isinstance(entry.new, dict) and entry.new.get("path"):
                controller = knob[len(MEMBERSHIP_PREFIX):]
                cgroups.add(f"cgroup_value:{controller}:{entry.new['path']}:")
    return keys + sorted(cgroups)


def describe_key(key: str) -> dict[str, Any]:
    """``{"target", "knob"}`` of one of this plugin's journal keys."""
    kind, _, rest = key.partition(":")
    if kind == "task":
        target, _, knob = key.rpartition(":")
        return {"target": target, "knob": knob}
    if kind == "cgroup_value":
        target, _, knob = rest.rpartition(":")
        return {"target": f"cgroup:{target}", "knob": knob}
    if kind == "cgroup_dir":
        return {"target": f"cgroup:{rest}", "knob": "directory"}
    if kind == "scx_task":
        return {"target": f"task:{rest}", "knob": "sched_ext"}
    if kind == "scx_loader":
        return {"target": "machine", "knob": "sched_ext scheduler"}
    return {"target": kind, "knob": rest}
