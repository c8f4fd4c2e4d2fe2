"""A dvfs policy document: its schema, checked without touching anything.

::

    [policy]
    subsystem = "dvfs"
    [[cpufreq]]                     # the cpufreq policies covering these CPUs
    cpus = "0-3"                    # or "all"
    governor = "schedutil"          # performance, powersave, schedutil, ondemand, ...
    epp = "balance_performance"     # energy_performance_preference (intel/amd pstate)
    min_khz = 1200000               # scaling_min_freq
    max_khz = 3000000               # scaling_max_freq
    [boost]
    enabled = false                 # cpufreq/boost or intel_pstate/no_turbo
    [[group]]
    name = "ui"
    match = { comm = ["Xorg"], pids = [4242] }     # and every descendant
    uclamp = { min = 512, max = 1024 }             # per task, 0..1024
    [[cgroup]]
    path = "user.slice"             # an existing cgroup v2 directory
    uclamp_min = 20.0               # cpu.uclamp.min, percent 0..100
    uclamp_max = "max"              # cpu.uclamp.max, percent or "max"

What the machine offers (the governor, the EPP value, frequencies within
``cpuinfo_min/max``, the CPUs) is checked against the live tree at the
static stage and at apply (:mod:`plugins.dvfs.verification`), not here: a
stored policy may be meant for another machine.
"""

from __future__ import annotations

from typing import Any

from plugins.dvfs import cpufreq, uclamp
from schedcpd.plugin_api import Finding

_CPUFREQ_KEYS = {"cpus", "governor", "epp", "min_khz", "max_khz"}
_GROUP_KEYS = {"name", "description", "match", "uclamp"}
_CGROUP_KEYS = {"path", "description", "uclamp_min", "uclamp_max"}
EPP_NAMES = ("default", "performance", "balance_performance", "balance_power", "power")
MAX_KHZ = 100_000_000


def _err(code: str, field: str, message: str) -> Finding:
    return {"code": code, "severity": "error", "field": field, "message": message}


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _percent(value: Any) -> bool:
    return value == "max" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                              and 0 <= value <= 100)


def _cpufreq(i: int, item: Any) -> list[Finding]:
    at = f"cpufreq[{i}]"
    if not isinstance(item, dict):
        return [_err("type", at, "must be a table")]
    out = [_err("unknown-key", f"{at}.{k}", f"unknown cpufreq setting {k!r}")
           for k in item if k not in _CPUFREQ_KEYS]
    cpus = item.get("cpus")
    if cpus != "all":
        try:
            cpufreq.parse_cpus(cpus) if isinstance(cpus, str) else None
        except ValueError as err:
            out.append(_err("cpus", f"{at}.cpus", str(err)))
        if not isinstance(cpus, str):
            out.append(_err("required", f"{at}.cpus", 'cpus = "all" or a list like "0-3,6" '
                            "is required"))
    gov = item.get("governor")
    if gov is not None and gov not in cpufreq.GOVERNORS:
        out.append(_err("unknown-governor", f"{at}.governor",
                        f"{gov!r}: not a Linux cpufreq governor (known: "
                        f"{', '.join(cpufreq.GOVERNORS)})"))
    epp = item.get("epp")
    if epp is not None and epp not in EPP_NAMES:
        out.append(_err("unknown-epp", f"{at}.epp", f"{epp!r}: must be one of "
                        f"{', '.join(EPP_NAMES)}"))
    for key in ("min_khz", "max_khz"):
        if key in item and not _int_in(item[key], 1, MAX_KHZ):
            out.append(_err("range", f"{at}.{key}", f"{item[key]!r}: must be an integer "
                            f"frequency in kHz in [1, {MAX_KHZ}]"))
    if _int_in(item.get("min_khz"), 1, MAX_KHZ) and _int_in(item.get("max_khz"), 1, MAX_KHZ) \
            and item["min_khz"] > item["max_khz"]:
        out.append(_err("min-above-max", f"{at}.min_khz", f"min_khz {item['min_khz']} is "
                        f"above max_khz {item['max_khz']}"))
    if not set(item) & (_CPUFREQ_KEYS - {"cpus"}):
        out.append(_err("empty", at, "set at least one of governor, epp, min_khz, max_khz"))
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
        if not isinstance(match.get("comm", []), list) or \
                not all(isinstance(c, str) for c in match.get("comm", [])):
            out.append(_err("type", f"{at}.match.comm", "must be a list of process names"))
        if not isinstance(match.get("pids", []), list) or \
                not all(_int_in(p, 1, 2**22) for p in match.get("pids", [])):
            out.append(_err("type", f"{at}.match.pids", "must be a list of pids"))
    clamp = group.get("uclamp")
    if not isinstance(clamp, dict) or not clamp or set(clamp) - {"min", "max"}:
        out.append(_err("required", f"{at}.uclamp", "uclamp = { min = 0..1024, max = "
                        "0..1024 } (one or both) is required"))
        return out
    for key in ("min", "max"):
        if key in clamp and not _int_in(clamp[key], 0, uclamp.SCALE):
            out.append(_err("range", f"{at}.uclamp.{key}", f"{clamp[key]!r}: must be an "
                            f"integer in [0, {uclamp.SCALE}]"))
    if _int_in(clamp.get("min"), 0, uclamp.SCALE) and _int_in(clamp.get("max"), 0, uclamp.SCALE) \
            and clamp["min"] > clamp["max"]:
        out.append(_err("min-above-max", f"{at}.uclamp.min", f"uclamp min {clamp['min']} is "
                        f"above max {clamp['max']}"))
    return out


def _cgroup(i: int, item: Any) -> list[Finding]:
    at = f"cgroup[{i}]"
    if not isinstance(item, dict):
        return [_err("type", at, "must be a table")]
    out = [_err("unknown-key", f"{at}.{k}", f"unknown cgroup setting {k!r}")
           for k in item if k not in _CGROUP_KEYS]
    path = item.get("path")
    if not isinstance(path, str) or not path.strip("/") or any(
            p in (".", "..") for p in path.split("/")):
        out.append(_err("cgroup-path", f"{at}.path", f"{path!r}: a cgroup v2 path below the "
                        "root (e.g. 'user.slice'), without . or .., is required"))
    for key in ("uclamp_min", "uclamp_max"):
        if key in item and not _percent(item[key]):
            out.append(_err("range", f"{at}.{key}", f"{item[key]!r}: a percentage in "
                            "[0, 100] or \"max\""))
    if "uclamp_min" not in item and "uclamp_max" not in item:
        out.append(_err("empty", at, "set uclamp_min and/or uclamp_max"))
    elif _percent(item.get("uclamp_min")) and _percent(item.get("uclamp_max")) and \
            uclamp.parse_percent(str(item["uclamp_min"])) > \
            uclamp.parse_percent(str(item["uclamp_max"])):
        out.append(_err("min-above-max", f"{at}.uclamp_min", "uclamp_min is above uclamp_max"))
    return out


def validate(doc: dict[str, Any]) -> list[Finding]:
    """Schema findings of a parsed dvfs policy (empty: valid)."""
    out: list[Finding] = []
    tables = {k: doc.get(k, []) for k in ("cpufreq", "group", "cgroup")}
    if not all(isinstance(v, list) for v in tables.values()):
        return [_err("type", "", "cpufreq, group and cgroup must be arrays of tables")]
    boost = doc.get("boost")
    if boost is not None and (not isinstance(boost, dict) or set(boost) != {"enabled"}
                              or not isinstance(boost["enabled"], bool)):
        out.append(_err("type", "boost", "[boost] holds one key: enabled = true or false"))
    if not any(tables.values()) and boost is None:
        out.append(_err("empty", "", "a dvfs policy needs [[cpufreq]], [boost], [[group]] or "
                        "[[cgroup]]"))
    unknown = set(doc) - {"policy", "cpufreq", "boost", "group", "cgroup", "parameters"}
    out += [_err("unknown-key", k, f"unknown table {k!r}") for k in sorted(unknown)]
    for i, item in enumerate(tables["cpufreq"]):
        out += _cpufreq(i, item)
    for i, item in enumerate(tables["group"]):
        out += _group(i, item)
    for i, item in enumerate(tables["cgroup"]):
        out += _cgroup(i, item)
    for kind, key in (("group", "name"), ("cgroup", "path")):
        names = [g.get(key) for g in tables[kind] if isinstance(g, dict)]
        if len(names) != len(set(map(str, names))):
            out.append(_err("duplicate", kind, f"a {kind} is named twice"))
    return out


def selector(group: dict[str, Any]) -> uclamp.Selector:
    """The group's process selector."""
    match = group.get("match", {})
    return uclamp.Selector([str(c) for c in match.get("comm", [])],
                           [int(p) for p in match.get("pids", [])])


def percent_text(value: Any) -> str:
    """A cgroup clamp as the kernel shows it (``"max"`` or two decimals)."""
    return "max" if value == "max" else f"{float(value):.2f}"
