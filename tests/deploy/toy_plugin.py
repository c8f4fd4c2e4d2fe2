"""A FAKE second subsystem, "toy", for tests/deploy/test_second_subsystem.py.

Its one knob per group is a value in memory (FAKE: no kernel state), and its
guard metric is a read latency the knob decides (FAKE: 100 us, or 1000 us
while a group's knob is ``slow``).  It imports only the public plugin API,
as an io or dvfs plugin would, and uses the deployer and breaker unchanged.
"""

from __future__ import annotations

import os
import time
from typing import Any

from schedcpd.plugin_api import (
    ApplyResult,
    BreakerSettings,
    Description,
    GroupSample,
    GuardMetrics,
    GuardRoles,
    Guards,
    RestoreReport,
    Samples,
    Scope,
    hookimpl,
)

SUBSYSTEM = "toy"
GUARDED = [True]
"""Whether schedcp_guards answers (a test sets it False: a subsystem without guards)."""
KNOBS: dict[str, str] = {}
"""group -> the knob's value now (FAKE kernel state)."""
PRIOR: dict[str, dict[str, str]] = {}
"""owner -> group -> value before it wrote (FAKE save-before-write journal)."""
TOY_METRICS = GuardMetrics(latency="read_latency_us", throughput="read_mib_s",
                           latency_text="read latency", latency_unit="us",
                           throughput_text="read rate", throughput_unit="MiB/s",
                           stall_text="had reads queued but none completed")


class ToyGuards:
    """Read latency per group, from the FAKE knob."""

    metrics = TOY_METRICS

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def sample(self) -> dict[str, GroupSample]:
        return {g: GroupSample(time.monotonic(), 1000.0 if KNOBS.get(g) == "slow" else 100.0,
                               50.0, 0, 1) for g in self.groups}

    def alive(self) -> bool:
        return True

    def subset(self, groups: dict[str, list[int]]) -> Guards:
        return ToyGuards(groups)

    def roles(self, baseline: Samples, settings: BreakerSettings) -> GuardRoles:
        return GuardRoles({g: "latency" for g in self.groups}, {})


@hookimpl
def schedcp_describe() -> Description:
    return {"name": SUBSYSTEM, "description": "FAKE test subsystem", "capabilities": {}}


@hookimpl
def schedcp_apply(subsystem: str, policy: dict[str, Any], scope: Scope,
                  dry_run: bool) -> ApplyResult | None:
    if subsystem != SUBSYSTEM:
        return None
    values = {g["name"]: g["knob"] for g in policy["group"]}
    result: ApplyResult = {"subsystem": SUBSYSTEM, "dry_run": dry_run,
                           "targets": {g: [os.getpid()] for g in values},
                           "changes": [{"target": g, "knob": "knob", "before": KNOBS.get(g, ""),
                                        "after": v} for g, v in values.items()]}
    if not dry_run:
        prior = PRIOR.setdefault(scope.get("owner", ""), {})
        for group, value in values.items():
            prior.setdefault(group, KNOBS.get(group, ""))
            KNOBS[group] = value
        if "pids" in scope:
            result["reason"] = f"toy knob set on {len(values)} group(s)"
    return result


@hookimpl
def schedcp_restore(subsystem: str, scope: Scope) -> RestoreReport | None:
    if subsystem != SUBSYSTEM:
        return None
    prior = PRIOR.pop(scope.get("owner", ""), {})
    KNOBS.update(prior)
    return {"entries": [{"key": g, "outcome": "restored"} for g in prior],
            "summary": {"restored": len(prior)}}


@hookimpl
def schedcp_guards(subsystem: str, policy: dict[str, Any],
                   targets: dict[str, list[int]]) -> Guards | None:
    return ToyGuards(dict(targets)) if subsystem == SUBSYSTEM and GUARDED[0] else None
