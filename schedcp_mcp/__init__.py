"""schedcp-mcp: schedcpd's D-Bus API as an MCP server, for agents such as Claude Code.

The server runs as the calling user and is one more D-Bus client of
schedcpd (:mod:`~schedcp_mcp.daemon`): the daemon authorizes every call by
that user's uid, so nothing more is allowed through MCP than through D-Bus.
Its tools (:mod:`~schedcp_mcp.tools`) are the entries of the client tool table
:data:`schedcp_agent.tools.TOOLS`, the same declarations the agent gives its
model; its resources (:mod:`~schedcp_mcp.resources`) are read through the same
calls.  :mod:`~schedcp_mcp.server` assembles them on the official MCP SDK's
low-level server; :mod:`~schedcp_mcp.http` serves it over streamable HTTP on
the loopback interface only.
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
