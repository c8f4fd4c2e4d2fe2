"""``schedcp-mcp``: schedcpd's tools for MCP clients (Claude Code, Claude Desktop, ...).

    schedcp-mcp [--bus system|session|ADDRESS] [-v]
        stdio: the MCP client starts this command and talks on stdin/stdout
    schedcp-mcp --http PORT [--host 127.0.0.1|::1|localhost] [--token-file PATH]
        streamable HTTP at http://HOST:PORT/mcp, loopback only, bearer token

Runs as the calling user; schedcpd authorizes each call by that user's uid.
Logs go to stderr.  Exit status: 0 the client closed the session, 1 the MCP SDK is
not installed, 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from schedcp_mcp.daemon import Daemon

EXIT_OK, EXIT_NO_SDK, EXIT_USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="schedcp-mcp", description="Serve schedcpd's D-Bus API as MCP tools and "
        "resources, with the rights of the user running it (docs/mcp.md).")
    p.add_argument("--bus", default=os.environ.get("SCHEDCP_BUS", "system"),
                   help="system, session or a D-Bus address (default $SCHEDCP_BUS or system)")
    p.add_argument("--http", type=int, metavar="PORT",
                   help="serve streamable HTTP on PORT (loopback only) instead of stdio")
    p.add_argument("--host", default="127.0.0.1",
                   help="loopback address for --http: 127.0.0.1, ::1 or localhost")
    p.add_argument("--token-file", type=Path,
                   help="bearer token for --http (made, mode 0600, when missing; default "
                        "$XDG_RUNTIME_DIR/schedcp-mcp/token)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every call to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the server until the client goes away."""
    args = parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else
                        logging.WARNING, format="schedcp-mcp: %(levelname)s %(message)s")
    daemon = Daemon(args.bus)
    try:
        import anyio

        from schedcp_mcp import http, server
    except ModuleNotFoundError as err:
        print(f"schedcp-mcp: the MCP SDK is not installed ({err}); install the project "
              "with its [mcp] extra: pip install 'schedcp[mcp]'", file=sys.stderr)
        return EXIT_NO_SDK
    if args.http is None:
        anyio.run(server.serve_stdio, daemon)
        return EXIT_OK
    try:
        settings = http.settings(args.host, args.http, args.token_file)
    except (ValueError, OSError) as err:  # a bad option or token file
        print(f"schedcp-mcp: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"schedcp-mcp: serving http://{settings.authority}/mcp; bearer token in "
          f"{settings.token_file}", file=sys.stderr)
    anyio.run(http.serve, daemon, settings)
    return EXIT_OK
