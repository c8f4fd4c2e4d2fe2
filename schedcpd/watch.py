"""Call back on the event loop when files in a directory change (watchdog).

Used for the configuration file and the policy drop-in directory.  The
directory is watched rather than single files because editors and package
managers replace a file (write a temporary, rename it over) instead of
writing it in place.  Bursts of events are coalesced into one callback.
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
_EVENTS = ("modified", "created", "moved", "deleted", "closed")


class _Handler(FileSystemEventHandler):
    def __init__(self, matches: Callable[[str], bool], fire: Callable[[], None]) -> None:
        self._matches = matches
        self._fire = fire

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        if event.event_type in _EVENTS and any(p and self._matches(p) for p in paths):
            self._fire()


class PathWatcher:
    """Call ``on_change()`` on ``loop`` after files in ``directory`` matching change."""

    def __init__(self, directory: Path | None, matches: Callable[[str], bool],
                 loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]) -> None:
        self._dir = directory
        self._matches = matches
        self._loop = loop
        self._on_change = on_change
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._pending: asyncio.TimerHandle | None = None

    @classmethod
    def for_file(cls, path: Path | None, loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[], None]) -> PathWatcher:
        """Watch one file (through its directory)."""
        return cls(path.parent if path else None, lambda p: p == str(path), loop, on_change)

    def start(self) -> bool:
        """Start watching; False (and nothing watched) when the directory is missing."""
        if self._dir is None or not self._dir.is_dir():
            return False
        observer = Observer()
        observer.schedule(_Handler(self._matches, self._from_thread), str(self._dir))
        observer.daemon = True
        observer.start()
        self._observer = observer
        _LOGGER.info("watching %s for changes", self._dir)
        return True

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
