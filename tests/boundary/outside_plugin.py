"""A third-party plugin for the privilege-boundary tests (run out of process, as nobody).

Named to the host the way an entry point is (``third_party={"outside": ...}``).
Its policy document says what to try: ``changes`` (a change set for the
core's actuator), ``adopt`` (values to have the core adopt) or ``direct_write``
(a path it opens for writing itself).
"""

from __future__ import annotations

import os
from typing import Any

from schedcpd.plugin_api import FILE, Knob, PluginContext, hookimpl

NAME = "outside"
CONTEXT: list[PluginContext] = []


@hookimpl
def schedcp_knobs(config: dict[str, Any]) -> list[Knob]:
    return [Knob("fake_ra", FILE, paths=(f"{config['fake_root']}/block/*/queue/read_ahead_kb",),
                 type="int", minimum=0, maximum=65536)]


@hookimpl
def schedcp_startup(context: PluginContext) -> None:
    CONTEXT.append(context)


@hookimpl
def schedcp_describe() -> dict[str, Any]:
    return {"name": NAME, "description": "privilege-boundary test plugin", "capabilities": {}}


@hookimpl
def schedcp_apply(subsystem: str, policy: dict[str, Any], scope: dict[str, Any],
                  dry_run: bool) -> dict[str, Any] | None:
    if subsystem != NAME:
        return None
    if "direct_write" in policy:
        try:
            with open(policy["direct_write"], "w") as f:
                f.write("0")
        except OSError as err:
            return {"errno": err.errno, "uid": os.getuid()}
        return {"errno": 0, "uid": os.getuid()}
    if "adopt" in policy:
        return {"entries": CONTEXT[-1].actuator.adopt(str(scope["owner"]), policy["adopt"]),
                "uid": os.getuid()}
    outcomes = CONTEXT[-1].actuator.apply(str(scope["owner"]), policy["changes"])
    return {"changes": outcomes, "uid": os.getuid()}


@hookimpl
def schedcp_restore(subsystem: str, scope: dict[str, Any]) -> dict[str, Any] | None:
    if subsystem != NAME:
        return None
    report: dict[str, Any] = CONTEXT[-1].actuator.restore(scope.get("owner"))
    return report


@hookimpl
def schedcp_observe(subsystem: str) -> dict[str, Any] | None:
    if subsystem != NAME:
        return None
    os._exit(3)  # a crash in the middle of a hook
