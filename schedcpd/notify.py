"""systemd's notify protocol: readiness, status lines and watchdog pings.

Uses the ``sdnotify`` library (it finds ``$NOTIFY_SOCKET``, abstract
sockets included, and does nothing when the variable is unset, so the same
daemon runs under systemd, in tests and by hand).  Watchdog pings are sent
at half the ``WatchdogSec`` interval systemd passes in ``$WATCHDOG_USEC``,
from the event loop, so a wedged loop stops the pings and systemd restarts
the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os

import sdnotify

_LOGGER = logging.getLogger(__name__)


class Notifier:
    """Send notify-protocol messages to the service manager, if any."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, **fields: str | int) -> None:
        """Send ``KEY=value`` lines, e.g. ``send(READY=1, STATUS="...")``."""
        if self.enabled:
            self._notifier.notify("\n".join(f"{k}={v}" for k, v in fields.items()))

    def status(self, text: str) -> None:
        """Set the one-line status ``systemctl status`` shows."""
        _LOGGER.info("%s", text)
        self.send(STATUS=text)

    def watchdog_interval(self) -> float | None:
        """Seconds between pings, or None when systemd asked for none."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and int(pid) != os.getpid()):
            return None
        return int(usec) / 2e6

    async def watchdog(self) -> None:
        """Ping the watchdog forever at half its interval (run as a task)."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        _LOGGER.info("systemd watchdog enabled; pinging every %.3g s", interval)
        while True:
            self.send(WATCHDOG=1)
            await asyncio.sleep(interval)
