"""Tier-2 ``perf stat``: time-boxed, concurrency-limited counting, parsed to JSON.

The daemon runs perf, never the agent: arguments are built here from
validated values (event names match a strict pattern and can never start
with ``-``), durations are capped, and perf is killed if the call is
cancelled or overruns.  Hardware counters are often missing in VMs; such
events come back as ``{"supported": false}``.

Cgroup targets: with the perf_event controller mounted (v1) or a cgroup2
hierarchy, perf counts the cgroup itself (``-a -G``).  Without it (this
project's reference hosts mount v1 without perf_event) the processes in the
cgroup at start are counted by pid instead, and a note says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from schedcpd.analysis import procfs
from schedcpd.errors import Busy, InvalidArgument, NotFound, NotSupported

_LOGGER = logging.getLogger(__name__)

DEFAULT_EVENTS = (
    "task-clock", "context-switches", "cpu-migrations", "page-faults",
    "cycles", "instructions", "branches", "branch-misses",
)
MAX_EVENTS = 16
_EVENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/=@-]{0,127}$")
_GRACE_S = 10.0  # perf start-up and teardown on top of the counting time


def parse_csv(text: str, cgroup_column: bool = False) -> dict[str, dict[str, Any]]:
    """Parse ``perf stat -x,`` output into ``{event: {...}}``.

    Fields per line: value, unit, event, [cgroup,] run time (ns), percent of
    time enabled, derived metric value, derived metric unit.
    """
    events: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split(",")
        if len(f) < 3:
            continue
        value, unit, event = f[0].strip(), f[1].strip(), f[2].strip()
        if not event:
            continue
        rest = f[4:] if cgroup_column else f[3:]
        entry: dict[str, Any]
        if value.startswith("<"):
            # "<not supported>" (no such counter here) or "<not counted>"
            # (counter never got scheduled): report, do not invent a number.
            entry = {"supported": value != "<not supported>", "counted": False,
                     "reason": value.strip("<>")}
        else:
            try:
                num: float = float(value)
            except ValueError:
                continue
            entry = {"value": int(num) if num.is_integer() and "." not in value else num,
                     "unit": unit or None, "supported": True, "counted": True}
            if len(rest) >= 2:
                with contextlib.suppress(ValueError):
                    entry["enabled_pct"] = float(rest[1])
            if len(rest) >= 4 and rest[2].strip():
                with contextlib.suppress(ValueError):
                    entry["metric"] = float(rest[2])
                    entry["metric_unit"] = rest[3].strip()
        events[event] = entry
    return events


def _perf_event_cgroup_root() -> Path | None:
    """Mount point of the hierarchy that carries perf_event (for ``-G``), if any.

    A v1 mount with perf_event wins; otherwise perf_event lives on cgroup2
    (it is implicit there), so a cgroup2 mount serves.
    """
    v2: Path | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] == "cgroup" and "perf_event" in rfields[2].split(","):
            return Path(fields[4])
        if rfields[0] == "cgroup2" and v2 is None:
            v2 = Path(fields[4])
    return v2


def _cgroup_pids(cgroup: str) -> list[int]:
    """Processes now in ``cgroup`` in any v1/v2 hierarchy that has it (cpu first)."""
    d = procfs.cgroup_cpu_dir(cgroup)
    if d is None:
        return []
    try:
        text = (d / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _check_cgroup(cgroup: str) -> str:
    if not cgroup.startswith("/") or ".." in cgroup.split("/") or "," in cgroup:
        raise InvalidArgument(f"cgroup must be an absolute cgroup path without '..': {cgroup!r}")
    return cgroup.rstrip("/") or "/"


class PerfStat:
    """Runs ``perf stat``; at most ``max_concurrent`` at once, each <= ``max_seconds``."""

    def __init__(self, perf: str | None = None, max_seconds: float = 30.0,
                 max_concurrent: int = 2) -> None:
        if not math.isfinite(max_seconds) or max_seconds <= 0 or max_concurrent < 1:
            raise InvalidArgument("perf max_seconds must be > 0 and max_concurrent >= 1")
        self.perf = perf or shutil.which("perf") or "/usr/bin/perf"
        self.max_seconds = max_seconds
        self.max_concurrent = max_concurrent
        self._running = 0

    @property
    def running(self) -> int:
        """perf processes running now."""
        return self._running

    def _events(self, events: list[str] | None) -> list[str]:
        if events is None:
            return list(DEFAULT_EVENTS)
        if not isinstance(events, list) or not events or len(events) > MAX_EVENTS:
            raise InvalidArgument(f"events must be a list of 1..{MAX_EVENTS} event names")
        for ev in events:
            if not isinstance(ev, str) or not _EVENT_RE.match(ev):
                raise InvalidArgument(f"bad perf event name: {ev!r}")
        return list(dict.fromkeys(events))

    async def run(self, pid: int | None, cgroup: str | None, seconds: float,
                  events: list[str] | None = None) -> dict[str, Any]:
        """Count ``events`` on a pid, a cgroup or (both None) the whole system."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise InvalidArgument("seconds must be a number")
        if not math.isfinite(seconds) or seconds <= 0:
            raise InvalidArgument(f"seconds must be > 0, got {seconds}")
        if pid is not None and cgroup is not None:
            raise InvalidArgument("give a pid or a cgroup, not both")
        evs = self._events(events)
        capped = seconds > self.max_seconds
        secs = min(float(seconds), self.max_seconds)
        notes: list[str] = []
        if capped:
            notes.append(f"seconds capped at {self.max_seconds:g}")
        target: dict[str, Any]
        cgroup_column = False
        args = [self.perf, "stat", "-x", ",", "-e", ",".join(evs)]
        if pid is not None:
            if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
                raise InvalidArgument(f"pid must be a positive integer, got {pid!r}")
            if not os.path.exists(f"/proc/{pid}"):
                raise NotFound(f"no process {pid}")
            args += ["-p", str(pid)]
            target = {"pid": pid}
        elif cgroup is not None:
            cg = _check_cgroup(cgroup)
            root = _perf_event_cgroup_root()
            if root is not None and (root / cg.lstrip("/")).is_dir():
                cgroup_column = True
                args = [self.perf, "stat", "-x", ",", "-a", "-e", ",".join(evs), "-G",
                        ",".join([cg] * len(evs))]
                target = {"cgroup": cg, "mode": "cgroup"}
            else:
                pids = _cgroup_pids(cg)
                if procfs.cgroup_cpu_dir(cg) is None:
                    raise NotFound(f"no cgroup {cg}")
                if not pids:
                    raise NotFound(f"cgroup {cg} has no processes")
                args += ["-p", ",".join(str(p) for p in pids)]
                target = {"cgroup": cg, "mode": "pids", "pids": len(pids)}
                notes.append("perf_event cgroup controller not mounted: counted the "
                             f"{len(pids)} processes in the cgroup at start")
        else:
            args.append("-a")
            target = {"system": True}
        args += ["--", "sleep", f"{secs:.3f}"]
        if self._running >= self.max_concurrent:
            raise Busy(f"{self._running} perf stat runs in progress (limit {self.max_concurrent})")
        self._running += 1
        try:
            return await self._exec(args, secs, target, evs, notes, capped, cgroup_column)
        finally:
            self._running -= 1

    async def _exec(self, args: list[str], secs: float, target: dict[str, Any],
                    evs: list[str], notes: list[str], capped: bool,
                    cgroup_column: bool) -> dict[str, Any]:
        if not os.access(self.perf, os.X_OK):
            raise NotSupported(f"perf not found at {self.perf}")
        env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        _LOGGER.debug("running %s", args)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), secs + _GRACE_S)
        except BaseException:
            # Cancelled or overran: perf and its sleep child must not outlive the call.
            _kill_group(proc)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            raise
        elapsed = time.monotonic() - t0
        text = err.decode("utf-8", "replace")
        events = parse_csv(text, cgroup_column)
        if proc.returncode != 0 and not events:
            tail = text.strip().splitlines()[-3:]
            raise NotSupported(f"perf stat failed (exit {proc.returncode}): {' | '.join(tail)}")
        missing = [e for e in evs if e not in events]
        if missing:
            notes.append(f"no output for: {', '.join(missing)}")
        unsupported = [e for e, v in events.items() if not v.get("supported", True)]
        if unsupported:
            notes.append(f"not supported here: {', '.join(unsupported)}")
        return {"target": target, "seconds": round(secs, 3), "elapsed": round(elapsed, 3),
                "capped": capped, "events": events, "notes": notes}


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL perf's session (perf and its ``sleep`` workload)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
