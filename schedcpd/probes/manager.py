"""Time-boxed, rate-limited attachment of catalogue probes for callers.

The daemon's only way to run BPF on an agent's behalf: a probe is looked up
by name in the fixed catalogue (nothing else can be loaded), attached for at
most ``max_seconds``, read, detached.  At most ``max_concurrent`` probes are
attached at once across all callers, and each caller may start at most
``per_caller_per_minute`` probes in any 60-second window.  Every exit path
(time up, task cancelled, caller gone, daemon stop) detaches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedcpd.errors import Busy, InvalidArgument, NotFound, NotSupported
from schedcpd.probes.catalogue import PROBES, default_bpf_dir, unavailable_reason
from schedcpd.probes.libbpf import LibbpfError
from schedcpd.probes.session import ProbeSession

_LOGGER = logging.getLogger(__name__)

RATE_WINDOW = 60.0
"""Seconds over which ``per_caller_per_minute`` is counted."""


@dataclass(eq=False)
class _Run:
    """One probe attachment in flight; it holds a concurrency slot until released."""

    name: str
    caller: str
    pid: int | None
    seconds: float
    task: asyncio.Task[Any] | None
    started: float = field(default_factory=time.time)
    released: asyncio.Event = field(default_factory=asyncio.Event)


class ProbeManager:
    """Runs catalogue probes for callers within duration, concurrency and rate limits."""

    def __init__(
        self,
        bpf_dir: Path | None = None,
        max_concurrent: int = 4,
        max_seconds: float = 60.0,
        per_caller_per_minute: int = 6,
    ) -> None:
        if max_concurrent < 1 or per_caller_per_minute < 1:
            raise ValueError("probe limits must be at least 1")
        if not (math.isfinite(max_seconds) and max_seconds > 0):
            raise ValueError("probe max_seconds must be a positive number")
        self.bpf_dir = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        self.max_concurrent = max_concurrent
        self.max_seconds = float(max_seconds)
        self.per_caller_per_minute = per_caller_per_minute
        self._runs: set[_Run] = set()
        self._starts: defaultdict[str, deque[float]] = defaultdict(deque)
        self._closed = False

    def catalogue(self) -> list[dict[str, Any]]:
        """Every probe with its parameters and whether it can run here (and why not)."""
        out = []
        for spec in PROBES.values():
            reason = unavailable_reason(spec, self.bpf_dir)
            entry: dict[str, Any] = {
                "name": spec.name,
                "description": spec.description,
                "parameters": [
                    {
                        "name": "seconds",
                        "type": "float",
                        "description": "how long to observe",
                        "max": self.max_seconds,
                    },
                    {
                        "name": "pid",
                        "type": "int",
                        "optional": True,
                        "description": "only this process (thread group); 0 or absent: all",
                    },
                ],
                "available": reason is None,
            }
            if reason is not None:
                entry["reason"] = reason
            out.append(entry)
        return out

    def active(self) -> list[dict[str, Any]]:
        """Probes attached or being attached now."""
        return [
            {
                "name": r.name,
                "caller": r.caller,
                "pid": r.pid,
                "seconds": r.seconds,
                "started": r.started,
            }
            for r in self._runs
        ]

    async def run(
        self,
        name: str,
        seconds: float,
        caller: str,
        pid: int | None = None,
        rate_key: str | None = None,
    ) -> dict[str, Any]:
        """Attach probe ``name`` for ``min(seconds, max_seconds)``, return its results.

        ``caller`` identifies the client for :meth:`cancel_caller` (e.g. its
        D-Bus unique name); ``rate_key`` (default: ``caller``) is what the
        per-caller rate limit counts, e.g. ``"uid:1000"`` so that a client
        cannot reset its budget by reconnecting.

        Raises NotFound (no such probe), InvalidArgument (bad seconds, pid or
        caller), NotSupported (objects or kernel support missing) and Busy
        (concurrency or per-caller rate limit, or shutting down).  Cancelling
        the calling task detaches the probe at once.
        """
        spec = PROBES.get(name)
        if spec is None:
            raise NotFound(f"no probe named {str(name)[:64]!r}; known: {', '.join(sorted(PROBES))}")
        requested = _check_seconds(seconds)
        pid = _check_pid(pid)
        if not isinstance(caller, str) or not caller:
            raise InvalidArgument("caller must be a non-empty string")
        if self._closed:
            raise Busy("the probe manager is shutting down")
        reason = unavailable_reason(spec, self.bpf_dir)
        if reason is not None:
            raise NotSupported(f"probe {name} is unavailable: {reason}")
        duration = min(requested, self.max_seconds)
        session = ProbeSession(spec, self.bpf_dir, pid)
        run = self._reserve(name, caller, rate_key or caller, pid, duration)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[Any] | None = None
        try:
            pending = loop.run_in_executor(None, session.start)
            try:
                await asyncio.shield(pending)
            except LibbpfError as exc:
                raise NotSupported(f"probe {name} could not be attached: {exc}") from exc
            await asyncio.sleep(duration)
            pending = loop.run_in_executor(None, _stop_and_read, session)
            result: dict[str, Any] = await asyncio.shield(pending)
        finally:
            self._release_when_done(run, session, pending)
        result["requested_seconds"] = requested
        result["capped"] = requested > self.max_seconds
        return result

    def _reserve(
        self, name: str, caller: str, rate_key: str, pid: int | None, duration: float
    ) -> _Run:
        """Take a concurrency slot and a rate token, or raise Busy (no await inside)."""
        if len(self._runs) >= self.max_concurrent:
            raise Busy(
                f"{len(self._runs)} probes are attached, the limit is"
                f" {self.max_concurrent}; retry when one ends"
            )
        now = time.monotonic()
        # Forget callers idle for a window (D-Bus unique names never repeat).
        for name in [n for n, q in self._starts.items() if not q or q[-1] <= now - RATE_WINDOW]:
            del self._starts[name]
        starts = self._starts[rate_key]
        while starts and starts[0] <= now - RATE_WINDOW:
            starts.popleft()
        if len(starts) >= self.per_caller_per_minute:
            wait = starts[0] + RATE_WINDOW - now
            raise Busy(
                f"{rate_key} started {len(starts)} probes in the last minute, the limit is"
                f" {self.per_caller_per_minute}; retry in {wait:.0f} s"
            )
        starts.append(now)
        run = _Run(name, caller, pid, duration, asyncio.current_task())
        self._runs.add(run)
        _LOGGER.info("probe %s for %s (pid %s, %.1f s)", name, caller, pid, duration)
        return run

    def _release_when_done(
        self, run: _Run, session: ProbeSession, pending: asyncio.Future[Any] | None
    ) -> None:
        """Close the session now, or as soon as its worker thread returns."""

        def release(_fut: object = None) -> None:
            try:
                session.close()
            except Exception:
                _LOGGER.exception("probe %s: close failed", run.name)
            self._runs.discard(run)
            run.released.set()

        if pending is not None and not pending.done():
            # A worker thread is inside libbpf (verifier or map reads) and
            # cannot be interrupted; the object is freed when it returns.
            pending.add_done_callback(release)
        else:
            release()

    async def cancel_caller(self, caller: str) -> int:
        """Detach every probe ``caller`` started; returns how many were running."""
        return await self._cancel(lambda r: r.caller == caller)

    async def close(self) -> None:
        """Detach every probe and refuse new ones (daemon stop)."""
        self._closed = True
        await self._cancel(lambda _r: True)

    async def _cancel(self, match: Callable[[_Run], bool]) -> int:
        runs = [r for r in self._runs if match(r)]
        for run in runs:
            if run.task is not None and run.task is not asyncio.current_task():
                run.task.cancel()
        await asyncio.gather(*(r.released.wait() for r in runs))
        return len(runs)


def _stop_and_read(session: ProbeSession) -> dict[str, Any]:
    session.stop()
    return session.read()


def _check_seconds(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidArgument("seconds must be a number")
    value = float(seconds)
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"seconds must be positive and finite, not {seconds!r}")
    return value


def _check_pid(pid: object) -> int | None:
    """None/0 mean every process; otherwise an existing thread-group id."""
    if pid is None or pid == 0:
        return None
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise InvalidArgument(f"pid must be a positive integer, not {pid!r}")
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise InvalidArgument(f"no process {pid}") from None
    for line in status.splitlines():
        if line.startswith("Tgid:"):
            tgid = int(line.split()[1])
            if tgid != pid:
                raise InvalidArgument(f"{pid} is a thread of process {tgid}; give {tgid}")
            break
    return pid
