"""A plugin implementing a hook that has no spec (a typo)."""

from __future__ import annotations

from schedcpd.hookspecs import hookimpl


@hookimpl
def schedcp_describ() -> dict[str, object]:
    return {}
