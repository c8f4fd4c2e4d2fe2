"""A plugin that raises when asked to describe itself."""

from __future__ import annotations

from schedcpd.hookspecs import hookimpl


@hookimpl
def schedcp_describe() -> dict[str, object]:
    raise ValueError("describe exploded")
