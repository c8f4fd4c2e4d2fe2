"""Verifier stage 2 for dvfs policies: what the machine offers, read without writing.

The checks are the apply's own (:func:`plugins.dvfs.applier.plan`, a dry
run: every CPU exists and has a cpufreq policy, governor and EPP are
offered, frequencies lie within ``cpuinfo_min/max_freq``, the minimum is
not above the maximum, boost has a switch, uclamp is in the kernel, the
cgroups exist with ``cpu.uclamp.*``), turned into findings, plus:

- ``conflict``: a cpufreq knob, boost or a cgroup another live dvfs
  policy already sets;
- ``caps-daemon`` (error): a group that matches schedcpd itself with a
  ``uclamp.max`` below half a CPU (its journal writes must not be slowed);
- ``floor-frequency`` (warning): a ``max_khz`` equal to ``cpuinfo_min_freq``
  pins every covered CPU to its lowest frequency.

Stage 4 (:func:`dynamic_check`): each group's clamps are set on a CPU-bound
child process of the check's own (no journal: the child is killed after),
which must keep getting CPU time under them (error ``no-progress``).
cpufreq and boost are machine-wide, with no sandbox to try them in: they
are checked statically only, and the stage says so (``info``
``machine-wide``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from typing import Any

from plugins.dvfs import applier, uclamp
from plugins.dvfs.actuator import Actuator
from plugins.dvfs.policy import selector
from schedcpd.plugin_api import (
    ActivePolicy,
    Finding,
    InvalidArgument,
    NotFound,
    NotSupported,
    SchedcpError,
    procfs,
)

_CODES = ((NotFound, "not-found"), (NotSupported, "not-supported"),
          (InvalidArgument, "invalid"))
_FIELD = re.compile(r"^((?:cpufreq|group|cgroup)\[\d+\](?:\.[a-z_]+)?|boost)(?=:)")


def _f(code: str, severity: str, field: str, message: str) -> Finding:
    return {"code": code, "severity": "error" if severity == "error" else
            "warning" if severity == "warning" else "info", "field": field, "message": message}


def _offered(doc: dict[str, Any], actuator: Actuator,
             clamp_ok: tuple[bool, str]) -> list[Finding]:
    try:
        applier.plan(doc, actuator, None, clamp_ok)
    except SchedcpError as err:
        code = next((c for cls, c in _CODES if isinstance(err, cls)), "invalid")
        text = str(err)
        match = _FIELD.match(text)
        return [_f(code, "error", match.group(1) if match else "", text)]
    return []


def _touches(doc: dict[str, Any]) -> set[str]:
    out = {f"cpufreq:{item.get('cpus')}:{knob}" for item in doc.get("cpufreq", [])
           for knob in ("governor", "epp", "min_khz", "max_khz") if knob in item}
    if doc.get("boost") is not None:
        out.add("boost")
    out |= {f"cgroup:{str(c.get('path', '')).strip('/')}" for c in doc.get("cgroup", [])}
    return out


def _overlap(mine: str, theirs: str) -> bool:
    if mine == theirs:
        return True
    a, b = mine.split(":"), theirs.split(":")
    return a[0] == b[0] == "cpufreq" and a[2] == b[2] and "all" in (a[1], b[1])


def static_check(doc: dict[str, Any], active: list[ActivePolicy], actuator: Actuator,
                 clamp_ok: tuple[bool, str]) -> list[Finding]:
    """Stage 2 findings (empty: nothing wrong)."""
    out = _offered(doc, actuator, clamp_ok)
    me = os.getpid()
    for i, group in enumerate(doc.get("group", [])):
        cap = group.get("uclamp", {}).get("max")
        if cap is not None and cap < 512 and me in selector(group).scan():
            out.append(_f("caps-daemon", "error", f"group[{i}].uclamp.max",
                          "the group matches schedcpd itself: its journal writes must not "
                          "be capped below half a CPU"))
    freq = actuator.freq
    for i, item in enumerate(doc.get("cpufreq", [])):
        if "max_khz" not in item or not freq.policies():
            continue
        pols = freq.policies()
        if any(freq.limits(p)[0] == item["max_khz"] for p in pols):
            out.append(_f("floor-frequency", "warning", f"cpufreq[{i}].max_khz",
                          f"{item['max_khz']} kHz is the lowest frequency: the CPUs are "
                          "pinned to it"))
    mine = _touches(doc)
    for other in active:
        try:
            theirs = _touches(tomllib.loads(other["document"]))
        except tomllib.TOMLDecodeError:
            continue
        for a in sorted(mine):
            if any(_overlap(a, b) for b in theirs):
                out.append(_f("conflict", "error", a.split(":")[0],
                              f"{a} is already set by active policy {other['name']!r} "
                              f"(deployment {other['deployment_id']})"))
    return out


def _cpu_ticks(pid: int) -> int:
    stat = procfs.read_pid_stat(pid)
    return 0 if stat is None else stat.utime + stat.stime


def dynamic_check(doc: dict[str, Any], seconds: float,
                  clamp_ok: tuple[bool, str]) -> list[Finding]:
    """Stage 4 findings; every child is killed whatever happens."""
    out: list[Finding] = []
    if doc.get("cpufreq") or doc.get("boost") is not None or doc.get("cgroup"):
        out.append(_f("machine-wide", "info", "", "cpufreq, boost and cgroup clamps act on "
                      "the whole machine: checked statically, not run in a sandbox"))
    groups = doc.get("group", [])
    if groups and not clamp_ok[0]:
        return [*out, _f("not-supported", "error", "group", f"uclamp: {clamp_ok[1]}")]
    run_s = max(1.0, seconds)
    for i, group in enumerate(groups):
        child = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            want = group["uclamp"]
            uclamp.set_(child.pid, int(want.get("min", uclamp.RESET)),
                        int(want.get("max", uclamp.RESET)))
            start = _cpu_ticks(child.pid)
            time.sleep(run_s)
            used = _cpu_ticks(child.pid) - start
        except OSError as err:
            out.append(_f("sandbox", "error", f"group[{i}]", f"could not clamp a test task: "
                          f"{err}"))
            continue
        finally:
            child.kill()
            child.wait()
        if used <= 0:
            out.append(_f("no-progress", "error", f"group[{i}].uclamp",
                          f"a CPU-bound task under {want} got no CPU time in {run_s:.1f} s"))
        else:
            out.append(_f("measured", "info", f"group[{i}]", f"a CPU-bound task under {want} "
                          f"ran {used} clock ticks in {run_s:.1f} s"))
    return out
