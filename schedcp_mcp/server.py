"""The MCP server: the SDK's low-level ``Server`` with schedcp's tools and resources.

The low-level server is used (not the decorator-based ``MCPServer``) because
the tools' schemas come from the shared tool table, not from Python function
signatures.  Every handler is a thin translation: tools to
:func:`schedcp_mcp.tools.call_tool`, resources to
:mod:`schedcp_mcp.resources`; the daemon does the rest.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from schedcp_mcp import __version__, resources
from schedcp_mcp.daemon import Daemon
from schedcp_mcp.tools import call_tool, mcp_tools

_LOGGER = logging.getLogger(__name__)

NAME = "schedcp"
INSTRUCTIONS = """\
schedcp tunes Linux CPU scheduling through the schedcpd daemon, which owns
every kernel change and checks each one.  You act with the rights of the user
who runs this server; the daemon refuses what that user may not do.

Work cheapest first: GetSummary(brief) to see the workload; RunPerfStat or
RunProbe only when the summary leaves it unclear.  ListPolicies / GetPolicy to
reuse a policy, SubmitPolicy for a new T1 TOML document, VerifyPolicy for a
token (the report lists findings to fix), PlanDeployment(token) to see every
value it would write, Deploy(token) for a canary deployment behind the
circuit breaker, GetDeployment / GetFeedback to judge it, Rollback to restore.
HoldDeployment ties a deployment to this server's connection: it is rolled
back when this server stops.
"""


def build(daemon: Daemon) -> Server[Any]:
    """A server whose tools and resources call ``daemon``."""

    async def on_list_tools(ctx: ServerRequestContext[Any],
                            params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=mcp_tools())

    async def on_call_tool(ctx: ServerRequestContext[Any],
                           params: types.CallToolRequestParams) -> types.CallToolResult:
        return await call_tool(daemon, params.name, params.arguments)

    async def on_list_resources(
            ctx: ServerRequestContext[Any],
            params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=await resources.list_resources(daemon))

    async def on_list_resource_templates(
            ctx: ServerRequestContext[Any],
            params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=resources.templates())

    async def on_read_resource(ctx: ServerRequestContext[Any],
                               params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return await resources.read_resource(daemon, str(params.uri))

    return Server(
        NAME, version=__version__, title="schedcp", instructions=INSTRUCTIONS,
        on_list_tools=on_list_tools, on_call_tool=on_call_tool,
        on_list_resources=on_list_resources,
        on_list_resource_templates=on_list_resource_templates,
        on_read_resource=on_read_resource,
    )


async def serve_stdio(daemon: Daemon) -> None:
    """Serve one MCP client on stdin/stdout until it closes them."""
    server = build(daemon)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        daemon.close()
