"""A well-behaved subsystem plugin used by the plugin-host tests."""

from __future__ import annotations

from typing import Any

from schedcpd.hookspecs import PluginContext, hookimpl

STARTED: list[PluginContext] = []


@hookimpl
def schedcp_startup(context: PluginContext) -> None:
    STARTED.append(context)


@hookimpl
def schedcp_describe() -> dict[str, Any]:
    return {"name": "good", "description": "test subsystem",
            "capabilities": {"knob": {"available": True, "reason": ""}}}


@hookimpl
def schedcp_state(subsystem: str) -> dict[str, Any] | None:
    return {"managed": []} if subsystem == "good" else None
