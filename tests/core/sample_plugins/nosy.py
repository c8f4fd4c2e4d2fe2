"""A subsystem plugin whose schedcp_state fails whatever it is asked (plugin-host tests)."""

from __future__ import annotations

from typing import Any

from schedcpd.plugin_api import hookimpl

ASKED: list[str] = []


@hookimpl
def schedcp_describe() -> dict[str, Any]:
    return {"name": "nosy", "description": "test subsystem that fails in schedcp_state",
            "capabilities": {}}


@hookimpl
def schedcp_state(subsystem: str) -> dict[str, Any] | None:
    ASKED.append(subsystem)
    raise RuntimeError("state exploded")
