"""Streamable HTTP for schedcp-mcp: the loopback interface only, behind a bearer token.

Over stdio only the MCP client that started the server can talk to it.  A
TCP port on the loopback interface can be reached by every local user, and
each call would run with the rights of the user who started the server -- more
than D-Bus gives those users.  So every request must carry
``Authorization: Bearer <token>``, a random secret kept in a file only the
server's user can read (mode 0600 in a 0700 directory); anything else gets
401 before the MCP layer sees it.  The SDK's DNS-rebinding protection (Host
and Origin must be loopback) stays on.  Other addresses are refused at start.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from schedcp_mcp.daemon import Daemon
from schedcp_mcp.server import build

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class HttpSettings:
    """Where to listen and the token to require."""

    host: str
    port: int
    token: str
    token_file: Path

    @property
    def authority(self) -> str:
        """host:port as in a URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _check_loopback(host: str) -> None:
    # Exactly the hosts for which the SDK turns its DNS-rebinding protection on.
    if host not in LOOPBACK:
        raise ValueError(f"--host {host!r} is not allowed: schedcp-mcp serves HTTP on "
                         f"{', '.join(LOOPBACK)} only")


def default_token_file() -> Path:
    """$XDG_RUNTIME_DIR/schedcp-mcp/token, or ~/.config/schedcp-mcp/token without one."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".config"
    return base / "schedcp-mcp" / "token"


def load_token(path: Path) -> str:
    """The token in ``path``; made (random, 0600, directory 0700) when the file is missing."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ValueError(f"{path} is readable by other users (chmod 600 it)")
        token = path.read_text().strip()
        if len(token) < 32:
            raise ValueError(f"{path} holds no token of at least 32 characters")
        return token
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    except OSError as err:
        raise ValueError(f"cannot make the token file {path}: {err.strerror}") from None
    return token


def settings(host: str, port: int, token_file: Path | None) -> HttpSettings:
    """Checked settings (ValueError naming what is wrong)."""
    _check_loopback(host)
    if not 0 < port < 65536:
        raise ValueError(f"--http {port}: not a TCP port")
    path = token_file or default_token_file()
    return HttpSettings(host, port, load_token(path), path)


class BearerToken:
    """ASGI middleware: HTTP requests without the right bearer token get 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on when it carries the token; answer 401 otherwise."""
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body",
                            "body": b"schedcp-mcp: missing or wrong bearer token\n"})
                return
        await self.app(scope, receive, send)


def app(daemon: Daemon, s: HttpSettings) -> Any:
    """The ASGI application: the SDK's streamable HTTP app behind the token check."""
    server = build(daemon)
    return BearerToken(server.streamable_http_app(host=s.host), s.token)


async def serve(daemon: Daemon, s: HttpSettings) -> None:
    """Serve until interrupted."""
    config = uvicorn.Config(app(daemon, s), host=s.host, port=s.port, log_level="warning",
                            lifespan="on")
    try:
        await uvicorn.Server(config).serve()
    finally:
        daemon.close()
