"""Hook specifications for agent-side plugins (unprivileged, in schedcp-agent).

These use their own pluggy project name, ``schedcp_agent``: pluggy matches an
implementation only to a spec of the same project, so an agent plugin can
never bind to a privileged daemon hook (and the daemon's host rejects any
implementation it has no spec for).
"""

from __future__ import annotations

from typing import Any

import pluggy

from schedcpd.const import AGENT_PLUGIN_PROJECT

hookspec = pluggy.HookspecMarker(AGENT_PLUGIN_PROJECT)
hookimpl = pluggy.HookimplMarker(AGENT_PLUGIN_PROJECT)


@hookspec
def schedcp_agent_planners() -> dict[str, Any] | None:
    """Offer planner backends: a mapping of backend name -> planner factory.

    The agent lists the names in ``--backend``; a factory is called with the
    agent's configuration and returns an object with ``plan(profile,
    candidates)``.
    """
