"""Reload the configuration when its file changes (watchdog).

The directory is watched rather than the file, because editors and package
managers replace a file (write a temporary, rename it over) instead of
writing it in place.  Bursts of events are coalesced into one reload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

_LOGGER = logging.getLogger(__name__)

_SETTLE_SECONDS = 0.3


class _Handler(FileSystemEventHandler):
    def __init__(self, path: Path, fire: Callable[[], None]) -> None:
        self._path = str(path)
        self._fire = fire

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
        if self._path in paths and event.event_type in ("modified", "created", "moved",
                                                       "closed"):
            self._fire()


class ConfigWatcher:
    """Call ``on_change`` on the event loop after ``path`` changes."""

    def __init__(self, path: Path | None, loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[], None]) -> None:
        self._path = path
        self._loop = loop
        self._on_change = on_change
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._pending: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start watching (no-op when there is no file or directory)."""
        if self._path is None or not self._path.parent.is_dir():
            return
        observer = Observer()
        observer.schedule(_Handler(self._path, self._from_thread), str(self._path.parent))
        observer.daemon = True
        observer.start()
        self._observer = observer
        _LOGGER.info("watching %s for changes", self._path)

    def _from_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._debounce)

    def _debounce(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._pending = self._loop.call_later(_SETTLE_SECONDS, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._on_change()

    def stop(self) -> None:
        """Stop watching."""
        if self._pending is not None:
            self._pending.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
