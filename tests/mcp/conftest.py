"""Fixtures for the MCP tests: schedcpd on a private bus, schedcp-mcp spawned by the SDK.

The server is started the way an MCP client starts it: the SDK's stdio
client spawns ``python -m schedcp_mcp --bus ADDRESS`` and talks on its
stdin/stdout.  As another uid it is spawned through ``setpriv`` (that user's
uid, gid and groups), so the daemon sees that user, as it would for a user
who configured schedcp-mcp in their own MCP client.
"""

from __future__ import annotations

import json
import pwd
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult, TextContent, TextResourceContents

from tests.agent.conftest import agent_cwd
from tests.deploy.conftest import FAST, Workload
from tests.harness import PrivateBus, SchedcpdProcess, wait_workers_ready

MCP_CONFIG = FAST  # fast verifier and deployer windows; default authorization


@pytest.fixture(scope="module")
def mcp_daemon(test_users: dict[str, int]) -> Iterator[SchedcpdProcess]:
    """schedcpd with fast windows and the default authorization, on a bus of its own."""
    with PrivateBus() as bus, SchedcpdProcess(bus.address, MCP_CONFIG) as proc:
        yield proc


def server_params(address: str, uid: int = 0) -> StdioServerParameters:
    """How to start schedcp-mcp on ``address`` as ``uid``."""
    argv = [sys.executable, "-m", "schedcp_mcp", "--bus", address]
    if uid != 0:
        pw = pwd.getpwuid(uid)
        argv = ["setpriv", f"--reuid={uid}", f"--regid={pw.pw_gid}", "--init-groups", *argv]
    return StdioServerParameters(command=argv[0], args=argv[1:], cwd=str(agent_cwd()))


@asynccontextmanager
async def mcp_client(address: str, uid: int = 0) -> AsyncIterator[Client]:
    """An MCP session with a schedcp-mcp process of its own (stopped at the end)."""
    async with Client(server_params(address, uid), cache=None, read_timeout_seconds=120) \
            as client:
        yield client


def text_of(result: CallToolResult) -> str:
    """The text of a tool result (one text block)."""
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent), result
    return result.content[0].text


def ok(result: CallToolResult) -> Any:
    """A successful tool result, JSON-decoded when it is JSON."""
    assert not result.is_error, text_of(result)
    text = text_of(result)
    try:
        return json.loads(text)
    except ValueError:
        return text


async def read_json(client: Client, uri: str) -> Any:
    """A resource's JSON content."""
    contents = (await client.read_resource(uri)).contents
    assert len(contents) == 1 and isinstance(contents[0], TextResourceContents), contents
    assert contents[0].mime_type == "application/json"
    return json.loads(contents[0].text)


def refused(result: CallToolResult) -> str:
    """The message of a failed tool result."""
    assert result.is_error, text_of(result)
    return text_of(result)


@pytest.fixture
def workload() -> Iterator[Workload]:
    """One CPU hog (the deployment target) and the periodic probe, owned by the test."""
    w = Workload(hogs=1)
    try:
        wait_workers_ready(w.procs)
        yield w
    finally:
        w.stop()
