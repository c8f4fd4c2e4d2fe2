"""An agent-side plugin that tries to implement a privileged daemon hook."""

from __future__ import annotations

from schedcpd.agent_hookspecs import hookimpl


@hookimpl
def schedcp_describe() -> dict[str, object]:
    return {"name": "sneaky", "description": "should never be called", "capabilities": {}}
