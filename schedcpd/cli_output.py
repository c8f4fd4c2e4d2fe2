"""What every ``schedcpctl`` command shares: exit codes, tables, progress, stop signals.

Results go to stdout (a table, or the daemon's JSON with ``--json``);
progress on long waits (verification, probation, probes) goes to stderr,
one line at a time, so a script reading stdout never sees it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

# The documented exit codes (README, schedcpctl(1)); 6 and 7 are for waits.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_DENIED, EXIT_INVALID = range(6)
EXIT_NOT_ACTIVE = 6
"""``deploy --wait`` / ``hold``: the deployment ended reverted or failed, not active."""
EXIT_TIMEOUT = 7
"""``--timeout`` ran out before what the command waited for happened."""
EXIT_INTERRUPTED = 130
"""``deploy --wait`` was interrupted (SIGINT/SIGTERM); the deployment goes on."""

FINAL_STATES = ("reverted", "failed")


@dataclass
class Outcome:
    """A command's result: ``data`` for ``--json``, ``text`` for humans, the exit code."""

    data: Any = None
    text: str | None = None
    code: int = EXIT_OK
    printed: bool = False
    """The command printed its output already (watch streams it)."""


def table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """Left-aligned columns under upper-case headers."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def when(stamp: float | None) -> str:
    """A wall-clock time, local, to the second."""
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def short(value: Any, width: int = 40) -> str:
    """A value for a table cell, cut to ``width``."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def read_arg(value: str) -> str:
    """A token or document given inline, as a file name, or ``-`` for stdin."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("schedcp1.") or "\n" in value:
        return value
    with open(value, encoding="utf-8") as f:
        return f.read()


class Progress:
    """Progress lines on stderr (none with ``--quiet``)."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None,
                 every: float = 5.0) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.every = every

    def say(self, text: str) -> None:
        """One line of progress."""
        if not self.quiet:
            print(f"schedcpctl: {text}", file=self.stream, flush=True)

    async def waiting(self, what: str, work: Awaitable[T]) -> T:
        """Await ``work``, saying what it waits for, then every ``every`` s how long."""
        task = asyncio.ensure_future(work)
        start = time.monotonic()
        self.say(f"{what} ...")
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.every)
            if done:
                break
            self.say(f"{what}: still waiting ({time.monotonic() - start:.0f} s)")
        result = task.result()
        self.say(f"{what}: done in {time.monotonic() - start:.1f} s")
        return result


class StopSignals:
    """SIGINT and SIGTERM end a wait (watch, hold) instead of killing the client."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.received: str | None = None

    def __enter__(self) -> StopSignals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop, sig.name)
        return self

    def _stop(self, name: str) -> None:
        self.received = name
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def next_or_stop(queue: asyncio.Queue[T], stop: asyncio.Event,
                       deadline: float | None) -> T | None:
    """The next queued item, or None when ``stop`` is set or ``deadline`` (monotonic) passes."""
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        await asyncio.wait({getter, stopper}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():  # also one that arrived as we stopped
        return getter.result()
    return None
