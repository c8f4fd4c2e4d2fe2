"""Verifier stages 2 and 4 for io policies: static checks, and fio in a sandbox.

Static (nothing is written): every named device exists here and offers the
scheduler; the policy does not lower the daemon itself (its journal must
keep being written) nor throttle the state directory's device below a
floor; conflicts with live io policies on the same device knob or group
processes; ``rt`` ioprio is a warning (it can starve everyone else).

Dynamic: a scratch loop device (:mod:`plugins.io.sandbox`) runs one fio job
per group, twice — with the loop device's defaults, then with the policy's
device settings applied to the loop device (the first ``[[device]]``
table's; the real device is never touched), each job at its group's ioprio,
in a blkio cgroup with its throttle limits re-aimed at the loop device.  A
group the policy lowers writes sequentially (1 MiB, queue depth 16), the
others read 4 KiB at random (queue depth 1).  Every job must move data (an
error ``no-progress`` otherwise), and a group the policy does not lower must
not get more than ``REGRESSION`` times slower at p99 (error ``regression``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from plugins.io import blkio, blockdev, guards, ioprio
from plugins.io.policy import selector
from plugins.io.sandbox import SandboxError, ScratchDevice, fio
from schedcpd.plugin_api import ActivePolicy, Finding

REGRESSION = 3.0
STATE_FLOOR = {"read_bps": 4 * 2**20, "write_bps": 4 * 2**20, "read_iops": 50,
               "write_iops": 50}
"""Lowest throttle allowed on the device of the daemon's state directory."""


def _f(code: str, severity: str, field: str, message: str, **evidence: Any) -> Finding:
    out: Finding = {"code": code, "severity": "error" if severity == "error" else
                    "warning" if severity == "warning" else "info",
                    "field": field, "message": message}
    if evidence:
        out["evidence"] = evidence
    return out


def static_check(doc: dict[str, Any], active: list[ActivePolicy],
                 state_dir: Path) -> list[Finding]:
    """Stage 2 findings (empty: nothing wrong)."""
    out: list[Finding] = []
    for i, dev in enumerate(doc.get("device", [])):
        name = dev["name"]
        if blockdev.identity(name) is None:
            out.append(_f("unknown-device", "error", f"device[{i}].name",
                          f"no block device {name!r} here (known: "
                          f"{', '.join(blockdev.devices())})"))
            continue
        sched = dev.get("scheduler")
        if sched and sched not in blockdev.schedulers(name)[1]:
            out.append(_f("scheduler-not-offered", "error", f"device[{i}].scheduler",
                          f"{name} offers {', '.join(blockdev.schedulers(name)[1])}, "
                          f"not {sched}"))
    state_dev = blockdev.device_of_path(state_dir) if state_dir.exists() else None
    me = os.getpid()
    for i, group in enumerate(doc.get("group", [])):
        for j, rule in enumerate(group.get("throttle", [])):
            if blockdev.identity(rule["device"]) is None:
                out.append(_f("unknown-device", "error", f"group[{i}].throttle[{j}].device",
                              f"no block device {rule['device']!r} here"))
            if rule["device"] == state_dev:
                for key, floor in STATE_FLOOR.items():
                    if key in rule and rule[key] < floor:
                        out.append(_f("starves-state-device", "error",
                                      f"group[{i}].throttle[{j}].{key}",
                                      f"{rule[key]} throttles {state_dev}, the device of the "
                                      f"daemon's state ({state_dir}), below {floor}"))
        if guards.lowered(group) and me in selector(group).scan():
            out.append(_f("lowers-daemon", "error", f"group[{i}].match",
                          "the group matches schedcpd itself: its journal writes must not "
                          "be lowered or throttled"))
        if (group.get("ioprio") or {}).get("class") == "rt":
            out.append(_f("realtime-io", "warning", f"group[{i}].ioprio.class",
                          "real-time I/O priority can starve every other task's I/O"))
    out += _conflicts(doc, active)
    return out


def _conflicts(doc: dict[str, Any], active: list[ActivePolicy]) -> list[Finding]:
    mine = {(d["name"], k) for d in doc.get("device", []) for k in d if k != "name"}
    out: list[Finding] = []
    for other in active:
        try:
            theirs = tomllib.loads(other["document"])
        except tomllib.TOMLDecodeError:
            continue
        both = mine & {(d.get("name"), k) for d in theirs.get("device", []) for k in d
                       if k != "name"}
        for dev, knob in sorted(both):
            out.append(_f("conflict", "error", "device",
                          f"{dev} {knob} is already set by active policy {other['name']!r} "
                          f"(deployment {other['deployment_id']})"))
    return out


def _jobs(doc: dict[str, Any], cgroup_root: Path | None) -> list[dict[str, Any]]:
    jobs = []
    for group in doc.get("group", []):
        lowered = guards.lowered(group)
        job: dict[str, Any] = {"name": group["name"]}
        job.update({"rw": "write", "bs": "1M", "iodepth": 16, "ioengine": "libaio"}
                   if lowered else
                   {"rw": "randread", "bs": "4k", "iodepth": 1, "ioengine": "psync"})
        prio = group.get("ioprio")
        if prio:
            job["prioclass"] = ioprio.CLASSES[prio["class"]]
            job["prio"] = int(prio.get("level", 4)) if prio["class"] != "none" else 0
        if cgroup_root is not None and group.get("throttle"):
            job["cgroup"] = f"{cgroup_root.name}/{group['name']}"
            job["cgroup_nodelete"] = 1
        jobs.append(job)
    return jobs


def _apply_device(doc: dict[str, Any], loop: str) -> None:
    devices = doc.get("device", [])
    if not devices:
        return
    dev = devices[0]
    q = blockdev.SYSFS / loop / "queue"
    if dev.get("scheduler"):
        (q / "scheduler").write_text(dev["scheduler"])
    for knob in blockdev.QUEUE_KNOBS:
        if knob in dev:
            (q / knob).write_text(str(dev[knob]))
    for key, val in dev.get("tunables", {}).items():
        (q / "iosched" / key).write_text(str(val))


def _throttle(doc: dict[str, Any], root: Path, majmin: str) -> None:
    for group in doc.get("group", []):
        if group.get("throttle"):
            cg = root / group["name"]
            cg.mkdir(exist_ok=True)
            for rule in group["throttle"]:
                for key in blkio.FILES:
                    if key in rule:
                        blkio.write_limit(cg, key, majmin, int(rule[key]))


def _remove_cgroups(root: Path) -> None:
    for child in sorted(root.glob("*/"), reverse=True):
        blkio.remove_dir(child)
    blkio.remove_dir(root)


def dynamic_check(doc: dict[str, Any], seconds: float, scratch: Path | None) -> list[Finding]:
    """Stage 4 findings; the sandbox is removed whatever happens."""
    if not doc.get("group"):
        return [_f("no-groups", "info", "", "no groups: the device settings alone were "
                   "checked statically (no workload to run)")]
    run_s = max(2.0, seconds)
    findings: list[Finding] = []
    root = None
    if any(g.get("throttle") for g in doc["group"]) and blkio.v1_available()[0]:
        root = blkio.ROOT / f"schedcp-sandbox-{os.getpid()}"
    try:
        with ScratchDevice(256, parent=scratch) as dev:
            before = fio(_jobs(doc, None), dev.path, run_s)
            _apply_device(doc, dev.name)
            if root is not None:
                root.mkdir(exist_ok=True)
                _throttle(doc, root, blockdev.identity(dev.name) or "")
            after = fio(_jobs(doc, root), dev.path, run_s)
    except (SandboxError, OSError) as err:
        return [_f("sandbox", "error", "", f"the fio sandbox could not run: {err}")]
    finally:
        if root is not None and root.exists():
            _remove_cgroups(root)
    for i, group in enumerate(doc["group"]):
        name = group["name"]
        a, b = after.get(name, {}), before.get(name, {})
        if a.get("io_mib", 0) <= 0:
            findings.append(_f("no-progress", "error", f"group[{i}]",
                               f"group {name!r} moved no data under the policy", default=b,
                               policy=a))
        elif (not guards.lowered(group) and b.get("clat_p99_us")
              and a["clat_p99_us"] > REGRESSION * b["clat_p99_us"]):
            findings.append(_f("regression", "error", f"group[{i}]",
                               f"group {name!r}: p99 {b['clat_p99_us']:.0f} -> "
                               f"{a['clat_p99_us']:.0f} us under the policy", default=b,
                               policy=a))
        else:
            findings.append(_f("measured", "info", f"group[{i}]",
                               f"group {name!r}: p50 {b.get('clat_p50_us', 0):.0f} -> "
                               f"{a.get('clat_p50_us', 0):.0f} us, p99 "
                               f"{b.get('clat_p99_us', 0):.0f} -> "
                               f"{a.get('clat_p99_us', 0):.0f} us", default=b, policy=a))
    return findings
