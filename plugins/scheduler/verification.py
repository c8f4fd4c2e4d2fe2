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

The dynamic test (:func:`dynamic_check`) runs the policy on a synthetic
workload the test starts itself: one worker per group (a periodic 2 ms
waker for latency groups, a server answering its dependants, a CPU spinner
for the rest) beside default-priority hogs on all CPUs but one.  It measures the
workers without the policy, then with the policy applied to those workers
alone (each group's selector replaced by the worker's pid), restores, and
reports a finding when a worker made no progress or a latency group's p99
regressed beyond ``3 x baseline + 1 ms`` in two pairs of windows in a row.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugins.scheduler import cgroups as cgroups_mod
from schedcpd.breaker import role_of

WORKER = Path(__file__).with_name("sandbox_worker.py")
_RT_RUNTIME = Path("/proc/sys/kernel/sched_rt_runtime_us")
_RT_PERIOD = Path("/proc/sys/kernel/sched_rt_period_us")
_UNFAIR_RATIO = 16
# CFS weight of nice -20..-11 (kernel/sched/core.c sched_prio_to_weight); nice 0 is 1024.
_NICE_WEIGHT = {-20: 88761, -19: 71755, -18: 56483, -17: 46273, -16: 36291, -15: 29154,
                -14: 23254, -13: 18705, -12: 14949, -11: 11916}
_MIN_QUOTA_FRACTION = 0.05
_ROUNDS = 2
_MIN_SHARES = 10
_SELECTOR_KEYS = ("comm", "pid", "unit", "cgroup", "cmdline", "uid")

Apply = Callable[[dict[str, Any], str], Any]
Restore = Callable[[str], Any]


def _finding(code: str, field: str, message: str, severity: str = "error") -> dict[str, Any]:
    return {"code": code, "severity": severity, "field": field, "message": message}


def _groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    groups = doc.get("group", [])
    return [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []


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


def _is_latency(group: dict[str, Any]) -> bool:
    task = group.get("task", {})
    return (
        task.get("policy") in ("fifo", "rr")
        or task.get("nice", 0) < 0
        or (isinstance(task.get("slice_us"), int) and task["slice_us"] <= 1000)
    )


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
    groups = _groups(doc)
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
            if _is_latency(group) != _is_latency(other) or bool(_no_share(group)) != bool(
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
                *(_selector_items(g) for g in _groups(tomllib.loads(other["document"])))
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


# -- dynamic --------------------------------------------------------------


def _role(group: dict[str, Any], groups: list[dict[str, Any]]) -> str:
    if any(group.get("name") in g.get("depends_on", []) for g in groups):
        return "server"
    # A group that depends on another is a client: it calls its server each period.
    return "periodic" if _is_latency(group) or group.get("depends_on") else "spin"


class _Sandbox:
    """The synthetic workload: worker processes the test owns, and hogs.

    All of them run in a scratch cgroup of the ``cpu`` controller
    (``/schedcp-<owner>``) so that, together, they weigh on the host like one
    task; it is removed with them.  A group with cgroup knobs leaves it for
    the plugin's own cgroup while the policy is applied, and comes back.
    """

    def __init__(self, doc: dict[str, Any], seconds: float, owner: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="schedcp-verify-"))
        self.groups = _groups(doc)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.seconds = seconds
        self.scratch: Path | None = None
        self.scratch_error = ""
        cpu = cgroups_mod.detect_hierarchies().get("cpu")
        if cpu is not None:
            path = cpu.path(f"/schedcp-{owner}")
            try:
                path.mkdir()
                self.scratch = path
            except OSError as err:
                self.scratch_error = f"cannot create a scratch cgroup {path}: {err}"
        else:
            self.scratch_error = "no cpu cgroup controller"

    def start(self) -> None:
        fifos: dict[str, Path] = {}
        for group in self.groups:
            if _role(group, self.groups) == "server":
                req, rep = self.dir / f"{group['name']}.req", self.dir / f"{group['name']}.rep"
                os.mkfifo(req)
                os.mkfifo(rep)
                fifos[group["name"]] = req
        # Contention on all CPUs but one: enough to expose a latency regression,
        # while a deprioritised group still finds the idle time it is meant to use.
        for _ in range(max(1, (os.cpu_count() or 1) - 1)):
            self._spawn("hog", ["spin"])
        for group in self.groups:
            name, role = group["name"], _role(group, self.groups)
            args = [role]
            if role == "server":
                args += [str(fifos[name]), str(fifos[name].with_suffix(".rep"))]
            deps = [d for d in group.get("depends_on", []) if d in fifos]
            if role == "periodic" and deps:
                args += [str(fifos[deps[0]]), str(fifos[deps[0]].with_suffix(".rep"))]
            self.workers[name] = self._spawn(name, args)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(self.dir / f"{name}-%d"), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "SCHEDCP_SANDBOX_PARENT": str(os.getpid())},
        )
        self.procs.append(proc)
        if self.scratch is not None:
            (self.scratch / "cgroup.procs").write_text(str(proc.pid))
        return proc

    def window(self, label: str, seconds: float) -> dict[str, dict[str, Any]]:
        """Ask every worker to report over the next ``seconds``; collect the reports."""
        for proc in self.workers.values():
            proc.send_signal(10)  # SIGUSR1: reset counters
        time.sleep(seconds)
        for proc in self.workers.values():
            proc.send_signal(12)  # SIGUSR2: write a report
        reports: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 5
        for name, proc in self.workers.items():
            path = self.dir / f"{name}-{proc.pid}.json"
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            try:
                reports[name] = json.loads(path.read_text())
                path.rename(path.with_suffix(f".{label}.json"))
            except (OSError, ValueError):
                reports[name] = {"iterations": 0, "missing": True}
        return reports

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()
        if self.scratch is not None:
            for _ in range(50):  # the kernel may take a moment to let go of the tasks
                try:
                    self.scratch.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def sandbox_policy(doc: dict[str, Any], workers: dict[str, int]) -> dict[str, Any]:
    """``doc`` with each group's selector replaced by its worker's pid."""
    out = {k: v for k, v in doc.items() if k not in ("group", "sysctl", "debugfs")}
    out["group"] = [
        {**g, "match": {"pid": [workers[g["name"]]]}, "descendants": False} for g in _groups(doc)
    ]
    return out


def _regressed(before: dict[str, Any], after: dict[str, Any], key: str) -> str | None:
    b, a = before.get(key), after.get(key)
    if not isinstance(b, (int, float)) or not isinstance(a, (int, float)):
        return None
    if a > 3 * b + 1000:
        return f"{key} {b:.0f} us -> {a:.0f} us"
    return None


def dynamic_check(
    doc: dict[str, Any], seconds: float, apply: Apply, restore: Restore
) -> list[dict[str, Any]]:
    """Stage 4 findings: run the policy on its own synthetic workload."""
    groups = _groups(doc)
    if not groups:
        return [
            _finding(
                "no-groups",
                "group",
                "only global knobs: nothing to run in a "
                "sandbox; global sysctls are not tested dynamically",
                "warning",
            )
        ]
    owner = f"verify-{uuid.uuid4().hex[:12]}"
    box = _Sandbox(doc, seconds, owner)
    half = max(seconds / 2, 0.25)
    try:
        box.start()
        time.sleep(0.2)  # let every worker settle into its loop
        # A p99 over one short window can be one stray preemption on a shared
        # host: a regression counts only if a second baseline/policy pair,
        # measured right after, shows it again.
        regressions: list[dict[str, Any]] | None = None
        for round_ in range(_ROUNDS):
            before = box.window(f"baseline{round_}", half)
            apply(sandbox_policy(doc, {n: p.pid for n, p in box.workers.items()}), owner)
            try:
                after = box.window(f"policy{round_}", half)
            finally:
                restore(owner)
            progress, found = _judge(groups, before, after, half, len(box.procs) - len(groups))
            regressions = found if regressions is None else [
                f for f in found if f["field"] in {r["field"] for r in regressions}]
            if not regressions:
                break
    finally:
        box.stop()
    notes = [] if box.scratch is not None else [
        _finding("no-scratch-cgroup", "group", f"{box.scratch_error}: the sandbox ran in "
                 "the daemon's own cgroup", "warning")]
    return progress + (regressions or []) + notes


def _judge(groups: list[dict[str, Any]], before: dict[str, dict[str, Any]],
           after: dict[str, dict[str, Any]], half: float,
           hogs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(progress findings, regression findings) of one baseline/policy pair."""
    progress: list[dict[str, Any]] = []
    regressions: list[dict[str, Any]] = []
    for index, group in enumerate(groups):
        name = group["name"]
        b, a = before.get(name, {}), after.get(name, {})
        if a.get("iterations", 0) <= 0:
            donor = role_of(group) == "donor"
            progress.append(_finding(
                "no-progress", f"group[{index}]",
                f"worker for group {name!r} ({_role(group, groups)}) made no progress in "
                f"{half:.1f} s under the policy"
                + (" (it is deprioritised by design; it runs on idle time only)"
                   if donor else ""),
                "warning" if donor else "error"))
        for key in ("wake_p99_us", "response_p99_us"):
            why = _regressed(b, a, key)
            if why:
                regressions.append(_finding(
                    "regression", f"group[{index}]",
                    f"group {name!r}: {why} with the policy, in {_ROUNDS} baseline/policy "
                    f"pairs measured beside {hogs} CPU hog(s)"))
    return progress, regressions
