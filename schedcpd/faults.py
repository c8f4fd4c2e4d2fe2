"""Fault injection for crash tests: SIGKILL this process at a named point.

``SCHEDCP_FAULT=after_write`` fires at the first pass through
``fault_point("after_write")``, ``SCHEDCP_FAULT=after_write:3`` at the third.
Unset (always, outside tests), it does nothing.  Subsystem plugins reach it
through :mod:`schedcpd.plugin_api`.
"""

from __future__ import annotations

import logging
import os
import signal

FAULT_ENV = "SCHEDCP_FAULT"

_LOGGER = logging.getLogger(__name__)
_counts: dict[str, int] = {}


def fault_point(point: str) -> None:
    """SIGKILL this process at ``point`` when ``SCHEDCP_FAULT`` asks for it."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= int(nth or 1):
        _LOGGER.warning("fault injection: SIGKILL at %s #%s", point, _counts[point])
        os.kill(os.getpid(), signal.SIGKILL)
