"""Call back on the event loop when files in a directory change (watchdog).

Used for the configuration file and the policy drop-in directory.  The
directory is watched rather than single files because editors and package
managers replace a file (write a temporary, rename it over) instead of
writing it in place.  Bursts of events are coalesced into one callback.

A directory that does not exist yet (no /etc/schedcp/policies.d on a fresh
install) is waited for: its nearest existing ancestor is watched until it
appears, then the directory itself, and the callback runs once for the
files already in it.
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
        self._waiting_on: Path | None = None

    @classmethod
    def for_file(cls, path: Path | None, loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[], None]) -> PathWatcher:
        """Watch one file (through its directory)."""
        return cls(path.parent if path else None, lambda p: p == str(path), loop, on_change)

    def start(self) -> bool:
        """Start watching; False while the directory is missing (it is waited for)."""
        if self._dir is None:
            return False
        if self._dir.is_dir():
            self._observe(self._dir, _Handler(self._matches, self._from_thread))
            _LOGGER.info("watching %s for changes", self._dir)
            return True
        ancestor = self._nearest_ancestor()
        if ancestor is None:
            return False
        self._observe(ancestor, _Handler(lambda _p: True, self._ancestor_changed))
        if ancestor != self._waiting_on:  # once per ancestor, not per event in /etc
            _LOGGER.info("%s does not exist; watching %s until it appears", self._dir, ancestor)
            self._waiting_on = ancestor
        return False

    def _nearest_ancestor(self) -> Path | None:
        assert self._dir is not None
        return next((a for a in self._dir.parents if a.is_dir()), None)

    def _observe(self, directory: Path, handler: FileSystemEventHandler) -> None:
        observer = Observer()
        observer.schedule(handler, str(directory))
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _ancestor_changed(self) -> None:
        self._loop.call_soon_threadsafe(self._retry)

    def _retry(self) -> None:
        if self._observer is None:  # stopped meanwhile
            return
        assert self._dir is not None
        if not self._dir.is_dir() and self._nearest_ancestor() == self._waiting_on:
            return  # an unrelated change in the watched ancestor (/etc is busy)
        self._stop_observer()
        if self.start():  # it appeared: load what it already holds
            self._debounce()

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
        self._stop_observer()

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
