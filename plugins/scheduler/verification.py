"""Verifier stages 2 and 4 for T1 scheduler policies.

Static analysis (:func:`static_check`) reads the policy's scheduling logic:

- ``starvation-risk``: a group that another group ``depends_on`` is given no
  guaranteed share (SCHED_IDLE, ``cpu.idle``, minimal shares, nice 19, or a
  quota under 5 % of a CPU) — the latency-critical task would wait on it;
- ``latency-at-idle``: one selector puts the same tasks in a latency group
  and an idle group;
- ``rt-throttle-off``: FIFO/RR while the kernel's RT throttle is disabled
  (``sched_rt_runtime_us`` -1 or not below ``sched_rt_period_us``): nothing
  would cap a runaway real-time task;
- ``rt-broad``: FIFO/RR for a selector that matches (nearly) every task;
- ``unfair-share``: a group given at least 16 times a default task's CPU
  weight (nice -13 or lower, cpu.shares 16384 or more): CPU-bound, it
  leaves its neighbours under 6 % of a CPU;
- ``cpuset-empty``: a CPU list with no online CPU;
- ``quota-starves``: a CFS quota under 5 % of one CPU;
- ``selects-everything``: an idle/batch group whose selector has no
  narrowing (``uid = 0`` or a cmdline regex matching anything);
- ``conflicts-active``: a group selects the same comm/pid/unit/cgroup as an
  active policy (two policies would fight over the same tasks).

The dynamic test (stage 4) is :mod:`plugins.scheduler.dynamic`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from plugins.scheduler import cgroups as cgroups_mod
from plugins.scheduler.sandbox import groups_of, is_latency

_RT_RUNTIME = Path("/proc/sys/kernel/sched_rt_runtime_us")
_RT_PERIOD = Path("/proc/sys/kernel/sched_rt_period_us")
_UNFAIR_RATIO = 16
# CFS weight of nice -20..-11 (kernel/sched/core.c sched_prio_to_weight); nice 0 is 1024.
_NICE_WEIGHT = {-20: 88761, -19: 71755, -18: 56483, -17: 46273, -16: 36291, -15: 29154,
                -14: 23254, -13: 18705, -12: 14949, -11: 11916}
_MIN_QUOTA_FRACTION = 0.05
_MIN_SHARES = 10
_SELECTOR_KEYS = ("comm", "pid", "unit", "cgroup", "cmdline", "uid")



def _finding(code: str, field: str, message: str, severity: str = "error") -> dict[str, Any]:
    return {"code": code, "severity": severity, "field": field, "message": message}


def _no_share(group: dict[str, Any]) -> str | None:
    """Why ``group`` has no guaranteed CPU share, or None."""
    task, cg = group.get("task", {}), group.get("cgroup", {})
    if task.get("policy") == "idle":
        return "SCHED_IDLE"
    if cg.get("idle") is True:
        return "cpu.idle"
    if isinstance(cg.get("shares"), int) and cg["shares"] <= _MIN_SHARES:
        return f"cpu.shares {cg['shares']}"
    if task.get("nice") == 19:
        return "nice 19"
    quota, period = cg.get("quota_us"), cg.get("period_us", 100_000)
    if isinstance(quota, int) and isinstance(period, int) and quota / period < _MIN_QUOTA_FRACTION:
        return f"a quota of {quota}/{period} us"
    return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches_anything(regex: Any) -> bool:
    try:
        return isinstance(regex, str) and re.search(regex, "") is not None
    except re.error:
        return False


def _selector_items(group: dict[str, Any]) -> set[tuple[str, str]]:
    match = group.get("match", {})
    return {(key, str(value)) for key in _SELECTOR_KEYS for value in _as_list(match.get(key, []))}


def _rt_uncapped() -> str | None:
    """Why real-time tasks are not capped by the kernel's RT throttle, or None."""
    try:
        runtime = int(_RT_RUNTIME.read_text())
        period = int(_RT_PERIOD.read_text())
    except (OSError, ValueError):
        return None
    if runtime < 0:
        return "the kernel's RT throttle is off (sched_rt_runtime_us = -1)"
    if runtime >= period:
        return f"the kernel's RT throttle allows {runtime} of every {period} us"
    return None


def _weight_ratio(group: dict[str, Any]) -> tuple[float, str] | None:
    """(weight / a default task's weight, why) when a group is boosted, else None."""
    task, cg = group.get("task", {}), group.get("cgroup", {})
    nice, shares = task.get("nice"), cg.get("shares")
    best: tuple[float, str] | None = None
    if isinstance(nice, int) and nice in _NICE_WEIGHT:
        best = (_NICE_WEIGHT[nice] / 1024, f"nice {nice}")
    if isinstance(shares, int) and shares > 1024 and (best is None or shares / 1024 > best[0]):
        best = (shares / 1024, f"cpu.shares {shares}")
    return best


def _online_cpus() -> set[int]:
    return set(
        cgroups_mod.parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text().strip())
    )


def static_check(doc: dict[str, Any], active: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage 2 findings for a schema-valid T1 policy (empty: nothing wrong)."""
    findings: list[dict[str, Any]] = []
    groups = groups_of(doc)
    by_name = {g.get("name"): (i, g) for i, g in enumerate(groups)}
    online = _online_cpus()
    for i, group in enumerate(groups):
        path = f"group[{i}]"
        for dep in group.get("depends_on", []):
            if dep not in by_name:
                findings.append(
                    _finding("unknown-dependency", f"{path}.depends_on", f"no group named {dep!r}")
                )
                continue
            why = _no_share(by_name[dep][1])
            if why:
                findings.append(
                    _finding(
                        "starvation-risk",
                        f"group[{by_name[dep][0]}]",
                        f"group {dep!r} runs with {why} (no guaranteed CPU share), but group "
                        f"{group.get('name')!r} depends on it: under any CPU-bound neighbour "
                        f"{group.get('name')!r} would wait for {dep!r} indefinitely",
                    )
                )
        task, cg = group.get("task", {}), group.get("cgroup", {})
        uncapped = _rt_uncapped() if task.get("policy") in ("fifo", "rr") else None
        if uncapped:
            findings.append(
                _finding(
                    "rt-throttle-off",
                    f"{path}.task.policy",
                    f"{uncapped}: nothing caps a FIFO/RR task, and a runaway one would "
                    "starve the machine",
                )
            )
        boost = _weight_ratio(group)
        if boost and boost[0] >= _UNFAIR_RATIO:
            findings.append(
                _finding(
                    "unfair-share",
                    f"{path}.{'task.nice' if boost[1].startswith('nice') else 'cgroup.shares'}",
                    f"{boost[1]} gives group {group.get('name')!r} {boost[0]:.0f} times a "
                    f"default task's CPU weight: CPU-bound, it leaves each neighbour on its "
                    f"CPU under {100 / (boost[0] + 1):.0f} % (limit: {_UNFAIR_RATIO} times)",
                )
            )
        for field, cpus in (
            (f"{path}.cgroup.cpus", cg.get("cpus")),
            (f"{path}.task.affinity", task.get("affinity")),
        ):
            if isinstance(cpus, str) and not set(cgroups_mod.parse_cpu_list(cpus)) & online:
                findings.append(
                    _finding(
                        "cpuset-empty",
                        field,
                        f"CPUs {cpus!r} include no online CPU (online: {sorted(online)})",
                    )
                )
        quota, period = cg.get("quota_us"), cg.get("period_us", 100_000)
        if (
            isinstance(quota, int)
            and isinstance(period, int)
            and quota / period < _MIN_QUOTA_FRACTION
        ):
            findings.append(
                _finding(
                    "quota-starves",
                    f"{path}.cgroup.quota_us",
                    f"{quota} us per {period} us is under {_MIN_QUOTA_FRACTION:.0%} of one CPU",
                )
            )
        match = group.get("match", {})
        broad = match.get("uid") in (0, [0]) or any(
            _matches_anything(rx) for rx in _as_list(match.get("cmdline", []))
        )
        if broad and (_no_share(group) or task.get("policy") == "batch"):
            findings.append(
                _finding(
                    "selects-everything",
                    f"{path}.match",
                    "this selector matches (nearly) every task, and the group lowers their share",
                )
            )
        if broad and task.get("policy") in ("fifo", "rr"):
            findings.append(
                _finding(
                    "rt-broad",
                    f"{path}.match",
                    "this selector matches (nearly) every task, and the group makes them "
                    "FIFO/RR: real-time must be confined to named tasks",
                )
            )
        for other in groups[i + 1 :]:
            if is_latency(group) != is_latency(other) or bool(_no_share(group)) != bool(
                _no_share(other)
            ):
                shared = _selector_items(group) & _selector_items(other)
                if shared and (_no_share(group) or _no_share(other)):
                    findings.append(
                        _finding(
                            "latency-at-idle",
                            f"{path}.match",
                            f"groups {group.get('name')!r} and {other.get('name')!r} select the "
                            f"same tasks ({sorted(shared)}) with opposite treatment",
                        )
                    )
    mine = set().union(*(_selector_items(g) for g in groups)) if groups else set()
    mine -= {(k, v) for k, v in mine if k in ("uid", "cmdline")}
    for other in active:
        try:
            theirs = set().union(
                *(_selector_items(g) for g in groups_of(tomllib.loads(other["document"])))
            )
        except Exception:  # an active policy we cannot read is not ours to judge
            continue
        shared = mine & theirs
        if shared:
            findings.append(
                _finding(
                    "conflicts-active",
                    "group",
                    f"active policy {other.get('name')!r} already manages {sorted(shared)}",
                )
            )
    return findings
