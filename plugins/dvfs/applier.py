"""Turn a dvfs policy into journaled writes: plan (dry run) and apply.

Only values that differ from the live ones are written, so applying the
same policy again (the deployer widens a canary) writes only what is new.
cpufreq, boost and cgroup clamps are machine-wide: a policy with any of
them is applied whole at the canary step (``scope = "machine"``); a policy
of task groups only is narrowed to the canary's pids.

Everything the machine must offer is checked before the first write, each
with a named error: a CPU that does not exist or has no cpufreq policy
(``NotFound``), no cpufreq driver, a governor or EPP value the policy does
not offer, no boost switch, no uclamp in the kernel (``NotSupported``), a
frequency outside ``cpuinfo_min_freq..cpuinfo_max_freq`` or a minimum
above the maximum (``InvalidArgument``).  A kernel refusal during the
apply restores what this owner wrote and raises, so nothing is left
half-applied.  A task that exits before its write is a skip reported in the
apply's problems (the core finds it gone before it journals anything).
"""

from __future__ import annotations

import logging
from typing import Any

from plugins.dvfs import cpufreq, uclamp
from plugins.dvfs.actuator import Actuator, Gone
from plugins.dvfs.policy import percent_text, selector
from schedcpd.plugin_api import (
    InvalidArgument,
    KernelRefused,
    NotFound,
    NotSupported,
    Plan,
    Write,
)

_LOGGER = logging.getLogger(__name__)


def _cpus_text(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus) or "none"


def _policies_of(item: dict[str, Any], freq: cpufreq.CpuFreq, at: str) -> list[str]:
    if not freq.policies():
        raise NotSupported(f"{at}: cpufreq: {freq.why_absent()}")
    if item["cpus"] == "all":
        return freq.policies()
    owners = freq.policy_of()
    present = set(freq.cpus())
    out = []
    for cpu in cpufreq.parse_cpus(item["cpus"]):
        if cpu not in present:
            raise NotFound(f"{at}.cpus: CPU {cpu} does not exist here (CPUs: "
                           f"{_cpus_text(sorted(present))})")
        if cpu not in owners:
            raise NotFound(f"{at}.cpus: CPU {cpu} has no cpufreq policy (covered: "
                           f"{_cpus_text(sorted(owners))})")
        if owners[cpu] not in out:
            out.append(owners[cpu])
    return out


def _freq_writes(item: dict[str, Any], pol: str, freq: cpufreq.CpuFreq, at: str,
                 plan: Plan) -> None:
    key = f"cpufreq:{pol}:"
    gov = item.get("governor")
    if gov is not None:
        offered = freq.governors(pol)
        if gov not in offered:
            raise NotSupported(f"{at}.governor: {pol} does not offer {gov!r} (offered: "
                               f"{', '.join(offered)})")
        live = freq.read(pol, "scaling_governor")
        if live != gov:
            plan.writes.append(Write("cpufreq", key + "scaling_governor", live, gov, pol,
                                     "scaling_governor"))
    epp = item.get("epp")
    if epp is not None:
        offered = freq.preferences(pol)
        if not offered:
            raise NotSupported(f"{at}.epp: {pol}'s driver has no "
                               "energy_performance_preference")
        if epp not in offered:
            raise NotSupported(f"{at}.epp: {pol} does not offer {epp!r} (offered: "
                               f"{', '.join(offered)})")
        live = freq.read(pol, "energy_performance_preference")
        if live != epp:
            plan.writes.append(Write("cpufreq", key + "energy_performance_preference", live,
                                     epp, pol, "energy_performance_preference"))
    if "min_khz" not in item and "max_khz" not in item:
        return
    lo, hi = freq.limits(pol)
    for name in ("min_khz", "max_khz"):
        if name in item and not lo <= int(item[name]) <= hi:
            raise InvalidArgument(f"{at}.{name}: {item[name]} kHz is outside {pol}'s "
                                  f"cpuinfo range [{lo}, {hi}] kHz")
    live_min = int(freq.read(pol, "scaling_min_freq"))
    live_max = int(freq.read(pol, "scaling_max_freq"))
    new_min, new_max = int(item.get("min_khz", live_min)), int(item.get("max_khz", live_max))
    if new_min > new_max:
        raise InvalidArgument(f"{at}.min_khz: {pol} would get a minimum of {new_min} kHz above "
                              f"its maximum of {new_max} kHz")
    writes = []
    if new_min != live_min:
        writes.append(Write("cpufreq", key + "scaling_min_freq", str(live_min), str(new_min),
                            pol, "scaling_min_freq"))
    if new_max != live_max:
        writes.append(Write("cpufreq", key + "scaling_max_freq", str(live_max), str(new_max),
                            pol, "scaling_max_freq"))
    if new_min > live_max:  # raise the ceiling before the floor goes above it
        writes.reverse()
    plan.writes += writes


def _boost_writes(doc: dict[str, Any], freq: cpufreq.CpuFreq, plan: Plan) -> None:
    switch = freq.boost()
    if switch is None:
        why = freq.why_absent() or "the cpufreq driver has no boost switch"
        raise NotSupported(f"boost: no {freq.root}/cpufreq/boost nor "
                           f"{freq.root}/intel_pstate/no_turbo ({why})")
    on = bool(doc["boost"]["enabled"])
    new = "0" if on == switch.inverted else "1"
    live = switch.path.read_text().strip()
    if live != new:
        plan.writes.append(Write("boost", switch.key, live, new, "cpufreq",
                                 "no_turbo" if switch.inverted else "boost"))


def _group_writes(group: dict[str, Any], pids: set[int] | None, clamp_ok: tuple[bool, str],
                  at: str, plan: Plan) -> None:
    name = str(group["name"])
    if not clamp_ok[0]:
        raise NotSupported(f"{at}.uclamp: group {name!r}: {clamp_ok[1]}")
    matched = selector(group).scan()
    plan.targets[name] = matched
    want = group["uclamp"]
    for pid in (p for p in matched if pids is None or p in pids):
        for tid in uclamp.threads(pid):
            start = uclamp.start_time(tid)
            try:
                live = list(uclamp.get(tid))
            except uclamp.TaskGone:
                start = None
            if start is None:
                plan.skipped.append({"target": f"task {tid}", "note": "exited"})
                continue
            new = [int(want.get("min", live[0])), int(want.get("max", live[1]))]
            if new[0] > new[1]:
                raise InvalidArgument(f"{at}.uclamp: task {tid} would get uclamp min "
                                      f"{new[0]} above its max {new[1]}")
            if new != live:
                plan.writes.append(Write("uclamp", f"uclamp:{tid}:{start}", live, new,
                                         f"task {tid}", "uclamp"))


def _cgroup_writes(item: dict[str, Any], actuator: Actuator, at: str, plan: Plan) -> None:
    ok, why = uclamp.cgroup_available(actuator.cgroup_root)
    if not ok or actuator.cgroup_root is None:
        raise NotSupported(f"{at}: cgroup uclamp: {why}")
    rel = str(item["path"]).strip("/")
    path = uclamp.cgroup_path(actuator.cgroup_root, rel)
    if not path.is_dir():
        raise NotFound(f"{at}.path: no cgroup {rel!r} under {actuator.cgroup_root}")
    for name in uclamp.CGROUP_FILES:
        key = name.replace("cpu.", "").replace(".", "_")
        if key not in item:
            continue
        if not (path / name).is_file():
            raise NotSupported(f"{at}: cgroup {rel!r} has no {name} (enable cpu in its "
                               "parent's cgroup.subtree_control)")
        live, new = (path / name).read_text().strip(), percent_text(item[key])
        if uclamp.parse_percent(live) != uclamp.parse_percent(new):
            plan.writes.append(Write("cg_uclamp", f"cg_uclamp:{rel}:{name}", live, new,
                                     f"cgroup {rel}", name))


def plan(doc: dict[str, Any], actuator: Actuator, pids: list[int] | None,
         clamp_ok: tuple[bool, str]) -> Plan:
    """What applying ``doc`` would write now (nothing is written); named errors."""
    freq = actuator.freq
    out = Plan(machine=bool(doc.get("cpufreq") or doc.get("boost") or doc.get("cgroup")))
    seen: dict[tuple[str, str], str] = {}
    for i, item in enumerate(doc.get("cpufreq", [])):
        at = f"cpufreq[{i}]"
        for pol in _policies_of(item, freq, at):
            for knob in ("governor", "epp", "min_khz", "max_khz"):
                if knob in item and (pol, knob) in seen:
                    raise InvalidArgument(f"{at}: {pol} {knob} is set by {seen[pol, knob]} "
                                          "too")
                seen.setdefault((pol, knob), at)
            _freq_writes(item, pol, freq, at, out)
    if doc.get("boost") is not None:
        _boost_writes(doc, freq, out)
    for i, item in enumerate(doc.get("cgroup", [])):
        _cgroup_writes(item, actuator, f"cgroup[{i}]", out)
    narrow = None if out.machine or pids is None else set(pids)
    for i, group in enumerate(doc.get("group", [])):
        _group_writes(group, narrow, clamp_ok, f"group[{i}]", out)
    return out


def apply(actuator: Actuator, p: Plan, owner: str) -> list[dict[str, Any]]:
    """Make the planned writes; on a failure restore this owner's writes and raise."""
    skipped = list(p.skipped)
    for w in p.writes:
        try:
            actuator.write(owner, w.kind, w.key, w.new)
        except Gone as err:
            if w.kind == "uclamp":
                skipped.append({"target": w.target, "note": str(err)})
                continue
            _undo(actuator, owner)
            raise NotFound(f"{w.target}: {err}; what this deployment wrote is restored") \
                from err
        except KernelRefused as err:
            _undo(actuator, owner)
            raise InvalidArgument(f"{w.target}: the kernel refused {w.knob} = {w.new!r} "
                                  f"({err}); what this deployment wrote is restored") from err
    return skipped


def _undo(actuator: Actuator, owner: str) -> None:
    report = actuator.restore(owner)
    _LOGGER.warning("dvfs apply of %s failed; restored: %s", owner, report["summary"])
