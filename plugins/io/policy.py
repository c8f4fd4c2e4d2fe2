"""An io policy document: its schema, checked without touching anything.

::

    [policy]
    subsystem = "io"
    [[device]]                      # a whole block device, by kernel name
    name = "loop3"
    scheduler = "mq-deadline"       # none, mq-deadline, kyber, bfq
    nr_requests = 32                # queue settings (blockdev.QUEUE_KNOBS)
    read_ahead_kb = 128
    tunables = { read_expire = 20 } # the scheduler's iosched tunables
    [[group]]
    name = "writer"
    match = { comm = ["dd"], pids = [4242] }
    ioprio = { class = "idle" }     # class none/rt/be/idle, level 0..7
    throttle = [{ device = "loop3", write_bps = 104857600 }]   # blkio (cgroup v1)

Findings use the dotted field paths of the document.  That a device
exists is a static check (:mod:`plugins.io.verification`), not schema: a
stored policy may name a device of another machine.
"""

from __future__ import annotations

from typing import Any

from plugins.io import blockdev, ioprio
from schedcpd.plugin_api import Finding

THROTTLE_KEYS = ("read_bps", "write_bps", "read_iops", "write_iops")
THROTTLE_MAX = 2**63 - 1
_DEVICE_KEYS = {"name", "scheduler", "tunables", *blockdev.QUEUE_KNOBS}
_GROUP_KEYS = {"name", "description", "match", "ioprio", "throttle"}


def _err(code: str, field: str, message: str) -> Finding:
    return {"code": code, "severity": "error", "field": field, "message": message}


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _device(i: int, dev: Any) -> list[Finding]:
    at = f"device[{i}]"
    if not isinstance(dev, dict):
        return [_err("type", at, "must be a table")]
    out = [_err("unknown-key", f"{at}.{k}", f"unknown device setting {k!r}")
           for k in dev if k not in _DEVICE_KEYS]
    name = dev.get("name")
    if not isinstance(name, str) or not blockdev.valid_name(name):
        out.append(_err("device-name", f"{at}.name", f"{name!r}: a block device's kernel "
                        "name (e.g. 'loop3') is required"))
    sched = dev.get("scheduler")
    if sched is not None and sched not in blockdev.SCHEDULERS:
        out.append(_err("range", f"{at}.scheduler", f"{sched!r}: must be one of "
                        f"{', '.join(blockdev.SCHEDULERS)}"))
    for knob, (lo, hi) in blockdev.QUEUE_KNOBS.items():
        if knob in dev and not _int_in(dev[knob], lo, hi):
            out.append(_err("range", f"{at}.{knob}", f"{dev[knob]!r}: must be an integer "
                            f"in [{lo}, {hi}]"))
    tunables = dev.get("tunables", {})
    if not isinstance(tunables, dict):
        return [*out, _err("type", f"{at}.tunables", "must be a table")]
    if tunables and sched not in blockdev.TUNABLES:
        out.append(_err("tunables-need-scheduler", f"{at}.tunables", "tunables need the "
                        "device's scheduler set to one that has them (mq-deadline, kyber, "
                        "bfq) in the same table"))
        return out
    allowed = blockdev.TUNABLES.get(str(sched), {})
    for key, val in tunables.items():
        if key not in allowed:
            out.append(_err("unknown-key", f"{at}.tunables.{key}",
                            f"{sched} has no tunable {key!r}; known: {', '.join(allowed)}"))
        elif not _int_in(val, *allowed[key]):
            out.append(_err("range", f"{at}.tunables.{key}", f"{val!r}: must be an integer "
                            f"in [{allowed[key][0]}, {allowed[key][1]}]"))
    return out


def _group(i: int, group: Any) -> list[Finding]:
    at = f"group[{i}]"
    if not isinstance(group, dict):
        return [_err("type", at, "must be a table")]
    out = [_err("unknown-key", f"{at}.{k}", f"unknown group setting {k!r}")
           for k in group if k not in _GROUP_KEYS]
    if not isinstance(group.get("name"), str) or not group["name"]:
        out.append(_err("required", f"{at}.name", "a group name is required"))
    match = group.get("match")
    if not isinstance(match, dict) or not (match.get("comm") or match.get("pids")):
        out.append(_err("required", f"{at}.match", "match = { comm = [...] and/or "
                        "pids = [...] } is required"))
    else:
        out += [_err("unknown-key", f"{at}.match.{k}", f"unknown selector {k!r}")
                for k in match if k not in ("comm", "pids")]
        if not all(isinstance(c, str) for c in match.get("comm", [])):
            out.append(_err("type", f"{at}.match.comm", "must be a list of process names"))
        if not all(_int_in(p, 1, 2**22) for p in match.get("pids", [])):
            out.append(_err("type", f"{at}.match.pids", "must be a list of pids"))
    prio = group.get("ioprio")
    if prio is not None:
        if not isinstance(prio, dict) or prio.get("class") not in ioprio.CLASSES:
            out.append(_err("range", f"{at}.ioprio.class", "must be one of "
                            f"{', '.join(ioprio.CLASSES)}"))
        elif not _int_in(prio.get("level", 4), 0, 7):
            out.append(_err("range", f"{at}.ioprio.level", f"{prio.get('level')!r}: must be "
                            "an integer in [0, 7]"))
        elif set(prio) - {"class", "level"}:
            out.append(_err("unknown-key", f"{at}.ioprio", "only class and level"))
    for j, rule in enumerate(group.get("throttle", [])):
        where = f"{at}.throttle[{j}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("device"), str) \
                or not blockdev.valid_name(rule["device"]):
            out.append(_err("device-name", f"{where}.device", "a device name is required"))
            continue
        limits = {k: v for k, v in rule.items() if k != "device"}
        if not limits or set(limits) - set(THROTTLE_KEYS):
            out.append(_err("unknown-key", where, f"limits are {', '.join(THROTTLE_KEYS)}"))
        out += [_err("range", f"{where}.{k}", f"{v!r}: must be an integer in [1, 2^63-1] "
                     "(0 would block all I/O; leave a limit out to not throttle)")
                for k, v in limits.items() if k in THROTTLE_KEYS
                and not _int_in(v, 1, THROTTLE_MAX)]
    return out


def validate(doc: dict[str, Any]) -> list[Finding]:
    """Schema findings of a parsed io policy (empty: valid)."""
    out: list[Finding] = []
    devices = doc.get("device", [])
    groups = doc.get("group", [])
    if not isinstance(devices, list) or not isinstance(groups, list):
        return [_err("type", "", "device and group must be arrays of tables")]
    if not devices and not groups:
        out.append(_err("empty", "", "an io policy needs at least one [[device]] or [[group]]"))
    unknown = set(doc) - {"policy", "device", "group", "parameters"}
    out += [_err("unknown-key", k, f"unknown table {k!r}") for k in sorted(unknown)]
    for i, dev in enumerate(devices):
        out += _device(i, dev)
    for i, group in enumerate(groups):
        out += _group(i, group)
    names = [d.get("name") for d in devices if isinstance(d, dict)]
    if len(names) != len(set(names)):
        out.append(_err("duplicate", "device", "a device is named twice"))
    gnames = [g.get("name") for g in groups if isinstance(g, dict)]
    if len(gnames) != len(set(gnames)):
        out.append(_err("duplicate", "group", "a group is named twice"))
    return out


def selector(group: dict[str, Any]) -> ioprio.Selector:
    """The group's process selector."""
    match = group.get("match", {})
    return ioprio.Selector([str(c) for c in match.get("comm", [])],
                           [int(p) for p in match.get("pids", [])])
