"""``python -m schedcp_mcp``: the same as the ``schedcp-mcp`` command."""

from __future__ import annotations

from schedcp_mcp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
