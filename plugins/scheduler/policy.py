"""T1 policy documents (TOML): schema, validation and the compiled form.

The format is documented in docs/policies.md.  Validation never touches
the kernel beyond reading what exists (CPUs, sysctls, debugfs); each
finding names the file, the field (dotted path, ``group[1].task.nice``) and
the allowed range.  Only allow-listed keys are accepted: an unknown key is
an error, not ignored.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugins.scheduler import sysctl
from plugins.scheduler.cgroups import parse_cpu_list
from plugins.scheduler.targets import Selector

SUBSYSTEM = "scheduler"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

# knob -> (min, max) for integer knobs of [group.task] and [group.cgroup].
TASK_RANGES: dict[str, tuple[int, int]] = {
    "nice": (-20, 19),
    "slice_us": (100, 100_000),
    "timer_slack_ns": (1, 100_000_000),
    "autogroup_nice": (-20, 19),
    "rt_priority": (1, 99),
}
CGROUP_RANGES: dict[str, tuple[int, int]] = {
    "shares": (2, 262_144),
    "quota_us": (1000, 10_000_000),
    "period_us": (1000, 1_000_000),
}
TASK_POLICIES = ("other", "batch", "idle", "fifo", "rr")
TOP_KEYS = {"policy", "parameters", "safety", "group", "sysctl", "debugfs", "guard"}
GUARD_KEYS = {"group", "metric", "max_ratio", "min_ratio"}
# metric -> the ratio key it takes and its allowed range (checked by the breaker).
GUARD_METRICS = {"wait_per_run_us": ("max_ratio", 1.05, 100.0),
                 "cpu_share": ("min_ratio", 0.01, 1.0)}
POLICY_KEYS = {"name", "description", "subsystem", "track", "workloads", "version", "tags"}
GROUP_KEYS = {"name", "description", "match", "task", "cgroup", "descendants", "depends_on"}
MATCH_KEYS = {"comm", "cmdline", "cgroup", "unit", "uid", "pid"}
TASK_KEYS = {"policy", "affinity", *TASK_RANGES}
CGROUP_KEYS = {"shares", "idle", "quota_us", "period_us", "cpus"}
SAFETY_KEYS = {"allow_realtime", "rt_priority_max"}
PARAM_KEYS = {"field", "min", "max", "default", "description"}


@dataclass
class Group:
    """One compiled policy group: whom it targets and what it sets."""

    name: str
    selector: Selector
    task: dict[str, Any]
    cgroup: dict[str, Any]
    descendants: bool = True


@dataclass
class Policy:
    """A validated, compiled T1 policy."""

    name: str
    groups: list[Group]
    sysctl: dict[str, int] = field(default_factory=dict)
    debugfs: dict[str, int] = field(default_factory=dict)
    allow_realtime: bool = False
    rt_priority_max: int = 0


def dotted_key(key: str) -> str:
    """``key`` as one part of a dotted field path: bare, or quoted as TOML would."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.findings: list[dict[str, Any]] = []

    def error(self, code: str, path: str, message: str) -> None:
        self.findings.append(
            {
                "code": code,
                "severity": "error",
                "field": path,
                "file": self.source,
                "message": f"{self.source}: {path}: {message}",
            }
        )

    def keys(self, table: Any, allowed: set[str], path: str) -> bool:
        if not isinstance(table, dict):
            self.error("type", path, "must be a table")
            return False
        for key in sorted(set(table) - allowed):
            self.error(
                "unknown-key",
                f"{path}.{dotted_key(key)}" if path else dotted_key(key),
                f"unknown key; allowed: {', '.join(sorted(allowed))}",
            )
        return True

    def integer(self, value: Any, path: str, lo: int, hi: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error("type", path, f"must be an integer in {lo}..{hi}")
        elif not lo <= value <= hi:
            self.error("range", path, f"{value} outside allowed range {lo}..{hi}")

    def string(self, value: Any, path: str) -> bool:
        if not isinstance(value, str) or not value:
            self.error("type", path, "must be a non-empty string")
            return False
        return True


def _cpus_ok(check: _Checker, value: Any, path: str) -> None:
    online = os.cpu_count() or 1
    try:
        if isinstance(value, str):
            cpus = parse_cpu_list(value)
        elif isinstance(value, list) and all(isinstance(c, int) for c in value):
            cpus = sorted(set(value))
        else:
            raise ValueError
    except ValueError:
        check.error("type", path, 'must be a CPU list like "0-1,3" or [0, 1]')
        return
    if not cpus:
        check.error("range", path, "must name at least one CPU")
    elif cpus[0] < 0 or cpus[-1] >= online:
        check.error("range", path, f"CPUs must be in 0..{online - 1} on this machine")


def _cgroup_path_ok(check: _Checker, value: str, path: str) -> None:
    """A cgroup selector is a canonical path inside the cgroup tree, nothing else."""
    if not value.startswith("/"):
        check.error("type", path, "must be an absolute cgroup path")
    elif any(part in (".", "..") for part in value.split("/")) or "//" in value:
        check.error("path", path, f"{value!r} leaves or re-enters the cgroup tree "
                    "('.', '..' or '//'); give the canonical path")
    elif any(ord(c) < 32 for c in value):
        check.error("path", path, "control characters are not allowed in a cgroup path")


def _check_match(check: _Checker, table: Any, path: str) -> None:
    if not check.keys(table, MATCH_KEYS, path):
        return
    if not table:
        check.error("empty-match", path, f"needs at least one of {', '.join(sorted(MATCH_KEYS))}")
    for key in ("comm", "unit", "cgroup"):
        values = table.get(key)
        if values is None:
            continue
        for value in values if isinstance(values, list) else [values]:
            if check.string(value, f"{path}.{key}") and key == "comm" and len(value) > 15:
                check.error("range", f"{path}.comm", f"{value!r} longer than 15 characters")
            if key == "cgroup" and isinstance(value, str):
                _cgroup_path_ok(check, value, f"{path}.cgroup")
    for key, hi in (("uid", 2**32 - 2), ("pid", 2**22)):
        values = table.get(key)
        if values is not None:
            for value in values if isinstance(values, list) else [values]:
                check.integer(value, f"{path}.{key}", 0 if key == "uid" else 1, hi)
    if "cmdline" in table and check.string(table["cmdline"], f"{path}.cmdline"):
        try:
            re.compile(table["cmdline"])
        except re.error as exc:
            check.error("regex", f"{path}.cmdline", f"bad regular expression: {exc}")


def _check_task(check: _Checker, table: Any, path: str, rt_allowed: bool, rt_max: int) -> None:
    if not check.keys(table, TASK_KEYS, path):
        return
    policy = table.get("policy")
    if policy is not None and policy not in TASK_POLICIES:
        check.error("range", f"{path}.policy", f"must be one of {', '.join(TASK_POLICIES)}")
    for key, (lo, hi) in TASK_RANGES.items():
        if key in table and key != "rt_priority":
            check.integer(table[key], f"{path}.{key}", lo, hi)
    if "affinity" in table:
        _cpus_ok(check, table["affinity"], f"{path}.affinity")
    realtime = policy in ("fifo", "rr")
    if realtime and not rt_allowed:
        check.error("realtime", f"{path}.policy", "fifo/rr need safety.allow_realtime = true")
    if realtime and "rt_priority" not in table:
        check.error("missing", f"{path}.rt_priority", "required with fifo/rr (1..99)")
    if "rt_priority" in table:
        if not realtime:
            check.error("realtime", f"{path}.rt_priority", "only with policy fifo or rr")
        elif rt_allowed:
            check.integer(table["rt_priority"], f"{path}.rt_priority", 1, max(1, rt_max))
    if realtime and "slice_us" in table:
        check.error("realtime", f"{path}.slice_us", "slice applies to other/batch/idle only")


def _check_cgroup(check: _Checker, table: Any, path: str) -> None:
    if not check.keys(table, CGROUP_KEYS, path):
        return
    for key, (lo, hi) in CGROUP_RANGES.items():
        if key in table:
            if key == "quota_us" and table[key] == -1:
                continue
            check.integer(table[key], f"{path}.{key}", lo, hi)
    if "idle" in table and not isinstance(table["idle"], bool):
        check.error("type", f"{path}.idle", "must be true or false")
    if "cpus" in table:
        _cpus_ok(check, table["cpus"], f"{path}.cpus")


def _check_combination(check: _Checker, group: dict[str, Any], path: str) -> None:
    task, cgroup = group.get("task", {}), group.get("cgroup", {})
    if not isinstance(task, dict) or not isinstance(cgroup, dict):
        return
    if cgroup.get("idle") is True and "shares" in cgroup:
        # The kernel rejects cpu.shares on an idle cgroup (its weight is fixed at 3).
        check.error("conflict", f"{path}.cgroup.shares", "cannot be combined with idle = true")
    if "cpus" in cgroup and "affinity" in task:
        # Joining a cpuset rewrites affinity; one owner of the CPU mask keeps restore exact.
        check.error("conflict", f"{path}.task.affinity", "use either task.affinity or cgroup.cpus")


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        if part.startswith("["):
            node = node[int(part[1:-1])]
        else:
            node = node[part]
    return node


def validate(doc: dict[str, Any], source: str = "<policy>") -> list[dict[str, Any]]:
    """Check a parsed policy; return findings (empty list = valid)."""
    check = _Checker(source)
    if not check.keys(doc, TOP_KEYS, ""):
        return check.findings
    meta = doc.get("policy")
    if not isinstance(meta, dict):
        check.error("missing", "policy", "a [policy] table with name and description is required")
        meta = {}
    else:
        check.keys(meta, POLICY_KEYS, "policy")
        if check.string(meta.get("name"), "policy.name") and not _NAME_RE.match(meta["name"]):
            check.error("type", "policy.name", "lower-case letters, digits and '-', 1..63 chars")
        check.string(meta.get("description"), "policy.description")
        if meta.get("subsystem", SUBSYSTEM) != SUBSYSTEM:
            check.error("range", "policy.subsystem", f"must be {SUBSYSTEM!r}")
        if meta.get("track", "T1") != "T1":
            check.error("range", "policy.track", "this plugin runs T1 (config-only) policies")
        workloads = meta.get("workloads", [])
        if not isinstance(workloads, list) or not all(isinstance(w, str) for w in workloads):
            check.error("type", "policy.workloads", "must be a list of strings")
    safety = doc.get("safety", {})
    rt_allowed, rt_max = False, 0
    if check.keys(safety, SAFETY_KEYS, "safety"):
        rt_allowed = safety.get("allow_realtime", False) is True
        if "rt_priority_max" in safety:
            check.integer(safety["rt_priority_max"], "safety.rt_priority_max", 1, 50)
            rt_max = safety["rt_priority_max"] if isinstance(safety["rt_priority_max"], int) else 0
        elif rt_allowed:
            check.error("missing", "safety.rt_priority_max", "required with allow_realtime (1..50)")
    names, groups = _check_groups(check, doc, GROUP_KEYS)
    for path, group in groups:
        if "task" not in group and "cgroup" not in group:
            check.error("empty", path, "a group must set [group.task] or [group.cgroup] knobs")
        if "task" in group:
            _check_task(check, group["task"], f"{path}.task", rt_allowed, rt_max)
        _check_combination(check, group, path)
        if "cgroup" in group:
            _check_cgroup(check, group["cgroup"], f"{path}.cgroup")
        if "descendants" in group and not isinstance(group["descendants"], bool):
            check.error("type", f"{path}.descendants", "must be true or false")
        deps = group.get("depends_on", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            check.error("type", f"{path}.depends_on", "must be a list of group names")
    sysctls = doc.get("sysctl", {})
    if check.keys(sysctls, set(sysctl.SYSCTL_RANGES), "sysctl"):
        present = set(sysctl.available_sysctls())
        for name, value in sysctls.items():
            if name not in sysctl.SYSCTL_RANGES:
                continue
            lo, hi = sysctl.SYSCTL_RANGES[name]
            check.integer(value, f"sysctl.{name}", lo, hi)
            if name not in present:
                check.error("unavailable", f"sysctl.{name}", "not present on this kernel")
    debug = doc.get("debugfs", {})
    if check.keys(debug, set(sysctl.DEBUGFS_KNOBS), "debugfs") and debug:
        ok, reason = sysctl.debugfs_status()
        if not ok:
            check.error("unavailable", "debugfs", reason)
        for name, value in debug.items():
            if name in sysctl.DEBUGFS_KNOBS:
                check.integer(value, f"debugfs.{name}", *sysctl.DEBUGFS_KNOBS[name])
    if not groups and not sysctls and not debug:
        check.error("empty", "group", "the policy changes nothing")
    _check_parameters(check, doc)
    _check_guards(check, doc, names)
    return check.findings


def _check_groups(check: _Checker, doc: dict[str, Any],
                  allowed: set[str]) -> tuple[set[str], list[tuple[str, dict[str, Any]]]]:
    """Check what every ``[[group]]`` has (keys, a unique name, a match table).

    Returns the group names and, for the caller's own checks, each group
    whose keys are all allowed, with its path in the document.
    """
    groups = doc.get("group", [])
    if not isinstance(groups, list):
        check.error("type", "group", "must be an array of tables ([[group]])")
        groups = []
    names: set[str] = set()
    checked = []
    for index, group in enumerate(groups):
        path = f"group[{index}]"
        if not check.keys(group, allowed, path):
            continue
        if check.string(group.get("name"), f"{path}.name"):
            if group["name"] in names:
                check.error("duplicate", f"{path}.name", f"group name {group['name']!r} repeats")
            names.add(group["name"])
        if "match" not in group:
            check.error("missing", f"{path}.match", "each group needs a [group.match] table")
        else:
            _check_match(check, group["match"], f"{path}.match")
        checked.append((path, group))
    return names, checked


def _check_guards(check: _Checker, doc: dict[str, Any], groups: set[str]) -> None:
    guards = doc.get("guard", [])
    if not isinstance(guards, list):
        check.error("type", "guard", "must be an array of tables ([[guard]])")
        return
    for index, guard in enumerate(guards):
        path = f"guard[{index}]"
        if not check.keys(guard, GUARD_KEYS, path):
            continue
        group = guard.get("group")
        if not isinstance(group, str) or group not in groups:
            check.error("missing", f"{path}.group", f"must name a group of this policy "
                        f"({', '.join(sorted(groups)) or 'none'})")
        metric = guard.get("metric")
        if not isinstance(metric, str) or metric not in GUARD_METRICS:
            check.error("range", f"{path}.metric",
                        f"must be one of {', '.join(GUARD_METRICS)}")
            continue
        key, lo, hi = GUARD_METRICS[metric]
        other = "min_ratio" if key == "max_ratio" else "max_ratio"
        if other in guard:
            check.error("range", f"{path}.{other}", f"{metric} takes {key}, not {other}")
        value = guard.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not lo <= value <= hi:
            check.error("range", f"{path}.{key}", f"a number from {lo} to {hi} is required")


def _check_parameters(check: _Checker, doc: dict[str, Any]) -> None:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        check.error("type", "parameters", "must be a table of [parameters.<name>] tables")
        return
    for name, spec in params.items():
        path = f"parameters.{dotted_key(name)}"
        if not check.keys(spec, PARAM_KEYS, path):
            continue
        if not check.string(spec.get("field"), f"{path}.field"):
            continue
        try:
            value = _lookup(doc, spec["field"])
        except (KeyError, IndexError, TypeError):
            check.error("missing", f"{path}.field", f"{spec['field']!r} is not in the policy")
            continue
        lo, hi = spec.get("min"), spec.get("max")
        for key in ("min", "max", "default"):
            bound = spec.get(key)
            if bound is not None and (isinstance(bound, bool)
                                      or not isinstance(bound, int | float)):
                check.error("type", f"{path}.{key}", "must be a number")
        if isinstance(lo, int | float) and isinstance(hi, int | float) \
                and not isinstance(lo, bool) and not isinstance(hi, bool):
            if lo > hi:
                check.error("range", f"{path}.min", f"{lo} is above max {hi}")
            elif isinstance(value, int) and not isinstance(value, bool) \
                    and not lo <= value <= hi:
                check.error("range", spec["field"], f"{value} outside parameter range {lo}..{hi}")
            default = spec.get("default")
            if isinstance(default, int | float) and not isinstance(default, bool) \
                    and not lo <= default <= hi:
                check.error("range", f"{path}.default", f"{default} outside {lo}..{hi}")


def compile_policy(doc: dict[str, Any]) -> Policy:
    """Turn a policy that passed :func:`validate` into a :class:`Policy`."""
    groups = []
    for group in doc.get("group", []):
        task = dict(group.get("task", {}))
        if "slice_us" in task:
            task["slice_ns"] = int(task.pop("slice_us")) * 1000
        if "policy" in task:
            prio = task.pop("rt_priority", None)
            task["policy"] = f"{task['policy']}:{prio}" if prio else task["policy"]
        if "affinity" in task and isinstance(task["affinity"], str):
            task["affinity"] = parse_cpu_list(task["affinity"])
        groups.append(
            Group(
                name=group["name"],
                selector=Selector.from_table(group["match"]),
                task=task,
                cgroup=dict(group.get("cgroup", {})),
                descendants=group.get("descendants", True),
            )
        )
    safety = doc.get("safety", {})
    return Policy(
        name=doc["policy"]["name"],
        groups=groups,
        sysctl=dict(doc.get("sysctl", {})),
        debugfs=dict(doc.get("debugfs", {})),
        allow_realtime=bool(safety.get("allow_realtime", False)),
        rt_priority_max=int(safety.get("rt_priority_max", 0)),
    )


def load(path: Path) -> dict[str, Any]:
    """Parse a policy file; raise ``InvalidArgument`` naming file and field on any error."""
    from schedcpd.plugin_api import InvalidArgument

    try:
        doc = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: not valid TOML: {exc}") from exc
    errors = [f for f in validate(doc, str(path)) if f["severity"] == "error"]
    if errors:
        raise InvalidArgument("; ".join(f["message"] for f in errors))
    return doc
