"""Plugins under test in this process, on a real journal (the ``journal`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from schedcpd.hookspecs import PluginContext
from schedcpd.journal import Journal

P = TypeVar("P")


@contextmanager
def started(plugin: P, subsystem: str, state_dir: Path, journal: Journal,
            **config: Any) -> Iterator[P]:
    """``plugin`` started on ``journal`` with ``config``.

    On the way out every value it wrote for ``subsystem`` is restored, then it
    shuts down.
    """
    plugin.schedcp_startup(  # type: ignore[attr-defined]
        PluginContext(state_dir=state_dir, journal=journal, config=config))
    try:
        yield plugin
    finally:
        plugin.schedcp_restore(subsystem, {})  # type: ignore[attr-defined]
        plugin.schedcp_shutdown()  # type: ignore[attr-defined]
