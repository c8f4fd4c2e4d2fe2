"""Turn an io policy into journaled writes: plan (dry run) and apply.

Only values that differ from the live ones are written, so applying the
same policy again (the deployer widens a canary) writes only what is new.
A device knob is machine-wide: a policy with ``[[device]]`` tables is
applied whole at the canary step (``scope = "machine"``); a policy of
groups only is narrowed to the canary's pids.

What cannot be applied is a named error, and nothing of the deployment is
left half-applied: an unknown device or scheduler is refused before any
write; a kernel refusal or a device removed during the apply restores what
this owner wrote and raises.  A task that exits before its write is a
skip reported in the apply's problems (the core finds it gone before it
journals anything), not a failure.
"""

from __future__ import annotations

import logging
from typing import Any

from plugins.io import blkio, blockdev, ioprio
from plugins.io.actuator import Actuator
from plugins.io.policy import THROTTLE_KEYS, selector
from schedcpd.plugin_api import (
    InvalidArgument,
    KernelRefused,
    NotFound,
    NotSupported,
    Plan,
    TargetGone,
    Write,
)

_LOGGER = logging.getLogger(__name__)


def _majmin(dev: str) -> str:
    ident = blockdev.identity(dev)
    if ident is None:
        raise NotFound(f"device {dev!r}: no such block device here "
                       f"(known: {', '.join(blockdev.devices())})")
    return ident


def _device_writes(dev: dict[str, Any], plan: Plan) -> None:
    name = str(dev["name"])
    ident = _majmin(name).replace(":", "_")
    prefix = f"queue:{name}:{ident}:"
    sched = dev.get("scheduler")
    active = blockdev.current(name, "scheduler")
    if sched is not None:
        offered = blockdev.schedulers(name)[1]
        if sched not in offered:
            raise NotSupported(f"device {name!r}: I/O scheduler {sched!r} is not offered "
                               f"(offered: {', '.join(offered)})")
        if sched != active:
            # The core journals nr_requests too (the switch resets it) and restores it after.
            plan.writes.append(Write("sched", prefix + "scheduler", active, sched, name,
                                     "scheduler"))
    for knob in blockdev.QUEUE_KNOBS:
        if knob in dev:
            live = blockdev.current(name, knob)
            if knob == "nr_requests" and sched not in (None, active):
                # The switch resets it: the core reads the prior after the switch.
                plan.writes.append(Write("queue", prefix + knob, None, str(dev[knob]), name,
                                         knob))
            elif live != str(dev[knob]):
                plan.writes.append(Write("queue", prefix + knob, live, str(dev[knob]), name,
                                         knob))
    for key, val in dev.get("tunables", {}).items():
        # Read after the scheduler switch (apply re-reads); the new
        # scheduler's defaults are unknown before it is active.
        plan.writes.append(Write("queue", f"{prefix}iosched/{key}", None, str(val), name,
                                 f"iosched/{key}"))


def _group_writes(group: dict[str, Any], owner: str, pids: set[int] | None,
                  plan: Plan) -> None:
    name = str(group["name"])
    matched = selector(group).scan()
    plan.targets[name] = matched
    chosen = [p for p in matched if pids is None or p in pids]
    prio = group.get("ioprio")
    if prio is not None:
        raw = ioprio.value(prio["class"], int(prio.get("level", 4)))
        for pid in chosen:
            for tid in ioprio.threads(pid):
                start = ioprio.start_time(tid)
                try:
                    live = ioprio.get(tid)
                except ioprio.TaskGone:
                    start = None
                if start is None:
                    plan.skipped.append({"target": f"task {tid}", "note": "exited"})
                    continue
                if live != raw:
                    plan.writes.append(Write("ioprio", f"ioprio:{tid}:{start}", live, raw,
                                             f"task {tid}", "ioprio"))
    rules = group.get("throttle", [])
    if not rules:
        return
    ok, why = blkio.v1_available()
    if not ok:
        raise NotSupported(f"group {name!r}: throttle: {why}")
    cg = blkio.group_dir(owner, name)
    if not cg.is_dir():
        plan.writes.append(Write("mkdir", f"blkio_dir:{cg}", None, str(cg), str(cg), "mkdir"))
    for rule in rules:
        ident = _majmin(str(rule["device"]))
        for limit in THROTTLE_KEYS:
            if limit in rule:
                live = blkio.read_limit(cg, limit, ident) if cg.is_dir() else 0
                if live != int(rule[limit]):
                    plan.writes.append(Write(
                        "throttle", f"blkio:{cg}:{limit}:{ident.replace(':', '_')}", live,
                        int(rule[limit]), f"{rule['device']} in {cg.name}", limit))
    rel = "/" + cg.name
    for pid in chosen:
        start = ioprio.start_time(pid)
        try:
            live_cg = blkio.cgroup_of(pid)
        except OSError:
            start = None
        if start is None:
            plan.skipped.append({"target": f"process {pid}", "note": "exited"})
        elif live_cg != rel:
            plan.writes.append(Write("move", f"blkio_move:{pid}:{start}", live_cg, rel,
                                     f"process {pid}", "blkio cgroup"))


def plan(doc: dict[str, Any], owner: str, pids: list[int] | None) -> Plan:
    """What applying ``doc`` for ``owner`` would write now (nothing is written)."""
    out = Plan(machine=bool(doc.get("device")))
    for dev in doc.get("device", []):
        _device_writes(dev, out)
    narrow = None if out.machine or pids is None else set(pids)
    for group in doc.get("group", []):
        _group_writes(group, owner, narrow, out)
    return out


def apply(actuator: Actuator, p: Plan, owner: str) -> list[dict[str, Any]]:
    """Make the planned writes; on a failure restore this owner's writes and raise.

    A value already as planned (a queue knob read before a scheduler switch
    that reset it) is left alone by the core and journals nothing.
    """
    skipped = list(p.skipped)
    for w in p.writes:
        try:
            actuator.write(owner, w.kind, w.key, w.prior, w.new)
        except TargetGone as err:
            if w.kind in ("ioprio", "move"):
                skipped.append({"target": w.target, "note": str(err)})
                continue
            _undo(actuator, owner)
            raise NotFound(f"{w.target}: {err}; what this deployment wrote is restored") \
                from err
        except (KernelRefused, OSError) as err:
            _undo(actuator, owner)
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise InvalidArgument(f"{w.target}: the kernel refused {w.knob} = {w.new!r} "
                                  f"({why}); what this deployment wrote is restored") from err
    return skipped


def _undo(actuator: Actuator, owner: str) -> None:
    report = actuator.restore(owner)
    _LOGGER.warning("io apply of %s failed; restored: %s", owner, report["summary"])
