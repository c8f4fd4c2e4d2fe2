"""The MCP tools: the client tool table, served as MCP tools and called over D-Bus.

Every entry of :data:`schedcp_agent.tools.TOOLS` is one MCP tool with the same
name (the D-Bus member), description and input schema the agent gives its
model, so a method is declared once.  A call is checked against that
declaration (:func:`~schedcp_agent.tools.check_arguments`) before anything
goes on the bus; what goes wrong comes back as a tool result with
``isError`` set and a message naming the fault -- a wrong argument, the
daemon's named error, or an unreachable bus -- never as a crash.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import mcp_types as types

from schedcp_agent.client import DaemonError
from schedcp_agent.tools import BY_NAME, TOOLS, Tool, check_arguments
from schedcp_mcp.daemon import Daemon, Unreachable, explain

_LOGGER = logging.getLogger(__name__)


def mcp_tool(t: Tool) -> types.Tool:
    """The MCP declaration of one table entry."""
    return types.Tool(
        name=t.name, description=t.description, input_schema=t.schema(),
        annotations=types.ToolAnnotations(
            read_only_hint=t.read_only, destructive_hint=False if t.read_only else None,
            idempotent_hint=True if t.read_only else None, open_world_hint=False),
    )


def mcp_tools() -> list[types.Tool]:
    """Every tool of the table, in table order."""
    return [mcp_tool(t) for t in TOOLS]


def render(t: Tool, value: Any) -> str:
    """A decoded answer as text: JSON for structured answers, the string itself otherwise."""
    if len(t.out) > 1 and isinstance(value, list):
        names = t.out_names or tuple(f"result{i}" for i in range(len(value)))
        value = dict(zip(names, value, strict=True))
    if value is None:
        return "done"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1)


def error_result(text: str) -> types.CallToolResult:
    """A tool result that reports a failure to the model."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                is_error=True)


async def call_tool(daemon: Daemon, name: str, arguments: Any) -> types.CallToolResult:
    """Run tool ``name`` with ``arguments`` (an MCP client's JSON) through the daemon."""
    t = BY_NAME.get(name)
    if t is None:
        return error_result(f"unknown tool {name!r}; the tools are: "
                            f"{', '.join(x.name for x in TOOLS)}")
    try:
        body = check_arguments(t, {} if arguments is None else arguments)
    except ValueError as err:
        return error_result(f"invalid arguments: {err}")
    try:
        value = await daemon.call(t, body)
    except DaemonError as err:
        _LOGGER.info("%s: %s", name, err.name)
        return error_result(explain(err))
    except Unreachable as err:
        _LOGGER.warning("%s", err)
        return error_result(f"schedcpd is not reachable: {err}")
    _LOGGER.info("%s: ok", name)
    return types.CallToolResult(content=[types.TextContent(type="text", text=render(t, value))])
