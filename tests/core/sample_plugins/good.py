"""A well-behaved subsystem plugin used by the plugin-host tests."""

from __future__ import annotations

from typing import Any

from schedcpd.errors import NotSupported
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


@hookimpl
def schedcp_observe(subsystem: str) -> dict[str, Any] | None:
    if subsystem != "good":
        return None
    raise NotSupported("this kernel has no knob to observe")  # a deliberate answer
