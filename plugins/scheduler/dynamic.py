"""Verifier stage 4 for T1 scheduler policies: the dynamic test.

The policy runs on its own synthetic workload (:mod:`plugins.scheduler.sandbox`):
one worker per group beside CPU hogs, each group's selector replaced by its
worker's pid, so nothing else on the host is touched.  The test alternates
short *baseline* windows (policy not applied) and *policy* windows (applied),
in pairs whose order flips each time (B P, P B, B P, ...) so a drift in the
host's load does not favour either side.  Steps that began before a window
(left over from the other side) do not count in it, and a step still in
flight when a window closes counts as a sample of at least the time it has
waited (a worker stuck on a starved server shows it).

Guarded, for each group the policy does not deprioritise (``role_of``):

- ``wake_p99_us`` of a periodic worker, and ``response_p99_us`` when it
  calls a server: a pair *regressed* when the policy window's value exceeds
  ``3 x baseline + 1 ms``;
- ``progress`` of a periodic worker or server (completed steps): a pair
  regressed when the policy window completed under half the baseline's.

Each guard is a sequential sign test (:mod:`schedcpd.sequential`): four
regressed pairs more than clean ones fail the policy, four clean ones more
pass the guard, with error rates of about 1 % each when a harmless policy
looks regressed in at most 20 % of pairs and a harmful one in at least
80 %.  A guard still undecided after ``max_pairs`` pairs makes the verdict
*inconclusive*: the stage fails closed with an ``inconclusive`` finding
(no token), and says how loaded the host was.  A worker with no progress at
all under the policy is a ``no-progress`` finding (a warning for a group the
policy deprioritises: it runs on idle time by design).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from plugins.scheduler.guards import role_of
from plugins.scheduler.sandbox import Sandbox, SandboxError, WindowStats, groups_of, metric
from schedcpd.plugin_api import Design, SignTest, procfs

Apply = Callable[[dict[str, Any], str], Any]
Restore = Callable[[str], Any]

MIN_WINDOW = 0.1
SETTLE = 0.03  # after applying or restoring, before a window opens
MARGIN_FACTOR, MARGIN_US = 3, 1000
LATENCY_METRICS = ("wake_p99_us", "response_p99_us")


def finding(code: str, field: str, message: str, severity: str = "error",
            evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """A verifier finding (``evidence`` only when there are figures to show)."""
    out: dict[str, Any] = {"code": code, "severity": severity, "field": field,
                           "message": message}
    if evidence is not None:
        out["evidence"] = evidence
    return out


def sandbox_policy(doc: dict[str, Any], workers: dict[str, int]) -> dict[str, Any]:
    """``doc`` with each group's selector replaced by its worker's pid."""
    out = {k: v for k, v in doc.items() if k not in ("group", "sysctl", "debugfs")}
    out["group"] = [
        {**g, "match": {"pid": [workers[g["name"]]]}, "descendants": False} for g in groups_of(doc)
    ]
    return out


class _Guard:
    """One guarded metric of one worker: its sign test and its figures."""

    def __init__(self, index: int, name: str, key: str, design: Design) -> None:
        self.index, self.name, self.key = index, name, key
        self.test = SignTest(design)
        self.baseline: list[float] = []
        self.policy: list[float] = []

    def add(self, before: float | None, after: float | None) -> None:
        if before is None or after is None:
            self.test.add(None)
            return
        self.baseline.append(before)
        self.policy.append(after)
        if self.key == "progress":
            self.test.add(after < before / 2)
        else:
            self.test.add(after > MARGIN_FACTOR * before + MARGIN_US)

    def evidence(self) -> dict[str, Any]:
        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 1) if values else None
        return {"group": self.name, "metric": self.key, **self.test.summary(),
                "baseline_median": median(self.baseline), "policy_median": median(self.policy)}

    def describe(self) -> str:
        ev = self.evidence()
        unit = " steps" if self.key == "progress" else " us"
        rule = ("under half the baseline's steps" if self.key == "progress"
                else f"beyond {MARGIN_FACTOR} x baseline + {MARGIN_US // 1000} ms")
        return (f"group {self.name!r}: {self.key} {ev['baseline_median']}{unit} -> "
                f"{ev['policy_median']}{unit} with the policy (medians); {self.test.regressed} "
                f"of {self.test.pairs} baseline/policy pairs regressed {rule} (sequential "
                f"test, false-alarm rate <= {self.test.design.alpha:.0%})")


def _guards(box: Sandbox, design: Design) -> list[_Guard]:
    guards = []
    for index, group in enumerate(box.groups):
        name, kind = group["name"], box.roles[group["name"]]
        if role_of(group) == "donor" or kind == "spin":
            continue
        guards.append(_Guard(index, name, "progress", design))
        if kind == "periodic":
            guards.append(_Guard(index, name, "wake_p99_us", design))
            if name in box.clients_of:
                guards.append(_Guard(index, name, "response_p99_us", design))
    return guards


def _observe(guards: list[_Guard], box: Sandbox, before: dict[str, WindowStats],
             after: dict[str, WindowStats]) -> None:
    for guard in guards:
        b, a = before[guard.name], after[guard.name]
        if guard.key == "progress":
            guard.add(float(b.completions) if b.completions else None, float(a.completions))
        else:
            server = guard.name in box.clients_of
            guard.add(metric(b, guard.key, server), metric(a, guard.key, server))


def dynamic_check(doc: dict[str, Any], seconds: float, apply: Apply, restore: Restore,
                  design: Design | None = None,
                  place: Callable[[str, str, int], None] | None = None,
                  release: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Stage 4 findings: run the policy on its own synthetic workload.

    ``seconds`` is the time the shortest decision takes (its pairs of
    windows); a run that does not settle takes at most ``max_pairs`` pairs.
    """
    design = design or Design()
    if not groups_of(doc):
        return [finding("no-groups", "group", "only global knobs: nothing to run in a "
                        "sandbox; global sysctls are not tested dynamically", "warning")]
    window = max(MIN_WINDOW, seconds / (2 * design.min_pairs))
    owner = f"verify-{uuid.uuid4().hex[:12]}"
    box = Sandbox(doc, owner, (lambda role, pid: place(owner, role, pid)) if place else None,
                  (lambda: release(owner)) if release else None)
    try:
        try:
            box.start()
        except SandboxError as err:
            return [finding("sandbox-failed", "group", f"{err}: no verdict is possible")]
        return _measure(doc, box, window, design, apply, restore, owner)
    finally:
        box.stop()


def _measure(doc: dict[str, Any], box: Sandbox, window: float, design: Design, apply: Apply,
             restore: Restore, owner: str) -> list[dict[str, Any]]:
    guards = _guards(box, design)
    policy = sandbox_policy(doc, {n: p.pid for n, p in box.workers.items()})
    totals = {name: [0, 0] for name in box.workers}  # completions: baseline, policy
    start_ns, start_cpu = time.monotonic_ns(), box.cpu_seconds()
    start_stat = procfs.read_system_stat()
    pairs = 0

    def measure(applied: bool) -> tuple[int, int]:
        if applied:
            apply(policy, owner)
        try:
            time.sleep(SETTLE)
            begin = time.monotonic_ns()
            time.sleep(window)
            return begin, time.monotonic_ns()
        finally:
            if applied:
                restore(owner)
                time.sleep(SETTLE)

    while pairs < design.max_pairs:
        order = (False, True) if pairs % 2 == 0 else (True, False)
        spans = {applied: measure(applied) for applied in order}
        pairs += 1
        try:
            box.check_alive()
        except SandboxError as err:
            return [finding("sandbox-failed", "group", f"{err}: no verdict is possible")]
        before, after = box.window(*spans[False]), box.window(*spans[True])
        for name in box.workers:
            totals[name][0] += before[name].completions
            totals[name][1] += after[name].completions
        _observe(guards, box, before, after)
        if any(g.test.verdict == "regressed" for g in guards):
            break
        if all(g.test.decided for g in guards) and pairs >= design.min_pairs:
            break
    elapsed = (time.monotonic_ns() - start_ns) / 1e9
    foreign = _foreign_load(start_stat, start_cpu, box, elapsed)
    return _verdict(box, guards, totals, pairs, window, foreign)


def _foreign_load(start: procfs.SystemStat, start_cpu: float, box: Sandbox,
                  elapsed: float) -> float:
    """CPUs' worth of work done outside the sandbox while it ran."""
    end = procfs.read_system_stat()
    busy = sum(b for b, _ in end.cpus) - sum(b for b, _ in start.cpus)
    tick = os.sysconf("SC_CLK_TCK")
    own = box.cpu_seconds() - start_cpu
    return max(0.0, (busy / tick - own) / elapsed) if elapsed > 0 else 0.0


def _verdict(box: Sandbox, guards: list[_Guard], totals: dict[str, list[int]], pairs: int,
             window: float, foreign: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    regressed = [g for g in guards if g.test.verdict == "regressed"]
    for guard in regressed:
        out.append(finding("regression", f"group[{guard.index}]", guard.describe(),
                           evidence=guard.evidence()))
    for index, group in enumerate(box.groups):
        name = group["name"]
        base, under = totals[name]
        if under == 0 and base > 0:
            donor = role_of(group) == "donor"
            out.append(finding(
                "no-progress", f"group[{index}]",
                f"worker for group {name!r} ({box.roles[name]}) made no progress in "
                f"{pairs} policy window(s) of {window:.2f} s"
                + (" (it is deprioritised by design; it runs on idle time only)" if donor
                   else ""), "warning" if donor else "error"))
    undecided = [g for g in guards if g.test.verdict in ("undecided", "inconclusive")]
    if regressed or any(f["severity"] == "error" for f in out):
        verdict = "failed"
    elif undecided:
        verdict = "inconclusive"
        out.append(finding(
            "inconclusive", "group",
            f"the measurements did not settle after {pairs} baseline/policy pairs ("
            + "; ".join(f"{g.name} {g.key}: {g.test.regressed} regressed, {g.test.clean} clean"
                        for g in undecided)
            + f"), with {foreign:.2f} CPUs of foreign load: no verdict, verify again on a "
            "quieter host"))
    else:
        verdict = "passed"
    out.append(finding(
        "measurement", "group",
        f"{verdict}: {pairs} alternating baseline/policy pairs of {window:.2f} s windows beside "
        f"{box.hogs} CPU hog(s), {foreign:.2f} CPUs of foreign load", "info",
        evidence={"verdict": verdict, "pairs": pairs, "window_seconds": round(window, 3),
                  "hogs": box.hogs, "foreign_load_cpus": round(foreign, 2),
                  "guards": [g.evidence() for g in guards]}))
    if box.scratch is None and box.place is None:
        out.append(finding("no-scratch-cgroup", "group", f"{box.scratch_error}: the sandbox ran "
                           "in the daemon's own cgroup", "warning"))
    return out
