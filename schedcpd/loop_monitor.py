"""Notice when the event loop stops running, and say where it is stuck.

Everything the daemon answers, and systemd's watchdog pings, run on one
asyncio loop: a synchronous call that takes long on it (a slow syscall, a
lock another thread holds, CPU work on a starved machine) stalls every
client and, past ``WatchdogSec``, gets the daemon killed by systemd with
nothing in the journal to say why.  A thread of its own watches a heartbeat
the loop sets every ``tick`` seconds; when the heartbeat is older than
``threshold`` it logs a warning with the loop thread's current stack, and
when the loop runs again it logs how long the stall lasted, and how much
of it the loop's thread ran on a CPU and how much it waited for one
(``/proc/self/task/<tid>/schedstat``): a thread that ran is stuck in a
call, a thread that waited is starved by other load.  The count and the
longest stall are kept for the metrics.

The watchdog pings stay on the loop (:mod:`schedcpd.notify`): this monitor
explains a stall, it does not hide one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)

#: a loop that has not run for this long is stalled (seconds)
DEFAULT_THRESHOLD = 5.0


class LoopMonitor:
    """A heartbeat on ``loop`` and a thread that reports when it stops."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float = DEFAULT_THRESHOLD,
                 tick: float | None = None,
                 on_stall: Callable[[], None] = lambda: None) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, not {threshold!r}")
        self.threshold = threshold
        self.tick = tick if tick is not None else min(0.5, threshold / 4)
        self.stalls = 0
        """Stalls seen (each counted once, when it passed ``threshold``)."""
        self.longest = 0.0
        """The longest stall that has ended, in seconds."""
        self.on_stall = on_stall
        """Called (from the monitor's thread) when a stall passes ``threshold``."""
        self._loop = loop
        self._beat = time.monotonic()
        self._loop_thread: int | None = None
        self._loop_tid = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating (from the loop's own thread) and watching."""
        self._loop_thread = threading.get_ident()
        self._loop_tid = threading.get_native_id()
        self._beat = time.monotonic()
        self._handle = self._loop.call_later(self.tick, self._on_beat)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="schedcp-loop-monitor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _on_beat(self) -> None:
        self._beat = time.monotonic()
        if not self._stop.is_set():
            self._handle = self._loop.call_later(self.tick, self._on_beat)

    def where(self) -> str:
        """The loop thread's current stack (innermost call last)."""
        frame = sys._current_frames().get(self._loop_thread or -1)
        if frame is None:
            return "  (the loop's thread has no frame)"
        return "".join(traceback.format_stack(frame)).rstrip()

    def cpu_times(self) -> tuple[float, float] | None:
        """(seconds on a CPU, seconds waiting for one) of the loop's thread, if known."""
        try:
            with open(f"/proc/self/task/{self._loop_tid}/schedstat", encoding="ascii") as f:
                ran, waited = f.read().split()[:2]
            return int(ran) / 1e9, int(waited) / 1e9
        except (OSError, ValueError):
            return None  # no schedstat in this kernel

    def _watch(self) -> None:
        stalled_since: float | None = None
        times = self.cpu_times()  # as of the last tick the loop was running
        while not self._stop.wait(self.tick):
            beat = self._beat
            late = time.monotonic() - beat
            if stalled_since is None and late <= self.tick * 2:
                times = self.cpu_times()
            elif stalled_since is None and late > self.threshold:
                stalled_since = beat
                self.stalls += 1
                self.on_stall()
                _LOGGER.warning("the event loop has not run for %.1f s (D-Bus calls and "
                                "watchdog pings wait); it is at:\n%s", late, self.where())
            elif stalled_since is not None and beat > stalled_since:
                lasted = beat - stalled_since
                self.longest = max(self.longest, lasted)
                now = self.cpu_times()
                how = ""
                if times is not None and now is not None:
                    how = (f" (meanwhile its thread ran {now[0] - times[0]:.2f} s on a CPU "
                           f"and waited {now[1] - times[1]:.2f} s for one)")
                _LOGGER.warning("the event loop ran again after %.1f s%s", lasted, how)
                stalled_since, times = None, now
