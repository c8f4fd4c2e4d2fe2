"""schedcp-mcp over streamable HTTP: loopback only, and only with the bearer token."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from schedcp_agent.tools import TOOLS
from schedcp_mcp.cli import main
from tests.harness import stop_process, wait_for
from tests.mcp.conftest import ok


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def http_server(mcp_daemon, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """schedcp-mcp --http on a free loopback port; (URL, token file)."""
    port = _free_port()
    token_file = tmp_path / "private" / "token"
    proc = subprocess.Popen([sys.executable, "-m", "schedcp_mcp", "--bus", mcp_daemon.address,
                             "--http", str(port), "--token-file", str(token_file)])
    try:
        wait_for(lambda: _listening(port), 30, "schedcp-mcp --http", proc)
        yield f"http://127.0.0.1:{port}/mcp", token_file
    finally:
        stop_process(proc)


async def test_http_needs_the_token_and_then_serves_the_tools(http_server) -> None:
    url, token_file = http_server
    # The token was made for this server, readable by its user only.
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.parent.stat().st_mode & 0o777 == 0o700
    token = token_file.read_text().strip()
    async with httpx2.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            answer = await http.post(url, json={}, headers=headers)
            assert answer.status_code == 401, (headers, answer.text)
            assert "bearer token" in answer.text
    authorized = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with Client(streamable_http_client(url, http_client=authorized), cache=None) as client:
        assert ok(await client.call_tool("GetStatus", {}))["caller"]["uid"] == 0
        assert [t.name for t in (await client.list_tools()).tools] == [t.name for t in TOOLS]
    # The SDK's DNS-rebinding protection is on: a foreign Host is refused even with the token.
    async with httpx2.AsyncClient() as http:
        answer = await http.post(url, json={}, headers={"Authorization": f"Bearer {token}",
                                                        "Host": "attacker.example:80"})
        assert answer.status_code in (403, 421), answer.text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.org"])
def test_http_refuses_to_listen_beyond_loopback(host: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--http", "8999", "--host", host, "--token-file", str(tmp_path / "token")])
    assert status == 2
    assert f"--host {host!r} is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "token").exists()


def test_http_refuses_a_token_file_others_can_read(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 43 + "\n")
    token.chmod(0o644)
    assert main(["--http", "8999", "--token-file", str(token)]) == 2
    assert "readable by other users" in capsys.readouterr().err
    # A token directory it cannot make: the reason, not a traceback.
    (tmp_path / "file").write_text("")
    assert main(["--http", "8999", "--token-file", str(tmp_path / "file" / "token")]) == 2
    assert f"cannot make the token file {tmp_path}/file/token" in capsys.readouterr().err
