"""Which tasks a policy group applies to: selectors over /proc.

A selector matches a *process*; every thread of a matching process is a
target.  The fields of one selector are AND-ed, the values within a list
field are OR-ed.  A selector with no field matches nothing (a policy must
say what it targets).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    """What selectors look at for one process."""

    pid: int
    ppid: int
    comm: str
    cmdline: str
    uid: int
    cgroups: tuple[str, ...]


@dataclass
class Selector:
    """A set of conditions on a process; see the module docstring."""

    comm: list[str] = field(default_factory=list)
    cmdline: re.Pattern[str] | None = None
    cgroup: list[str] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    uid: list[int] = field(default_factory=list)
    pid: list[int] = field(default_factory=list)

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Selector:
        """Build from a validated ``[group.match]`` table."""

        def as_list(value: Any) -> list[Any]:
            if value is None:
                return []
            return list(value) if isinstance(value, list) else [value]

        cmdline = table.get("cmdline")
        return cls(
            comm=[str(x) for x in as_list(table.get("comm"))],
            cmdline=re.compile(cmdline) if cmdline else None,
            cgroup=[str(x).rstrip("/") or "/" for x in as_list(table.get("cgroup"))],
            unit=[str(x) for x in as_list(table.get("unit"))],
            uid=[int(x) for x in as_list(table.get("uid"))],
            pid=[int(x) for x in as_list(table.get("pid"))],
        )

    def is_empty(self) -> bool:
        """True when no condition is set."""
        return not (self.comm or self.cmdline or self.cgroup or self.unit or self.uid or self.pid)

    def matches(self, info: ProcessInfo) -> bool:
        """True when ``info`` satisfies every condition that is set."""
        if self.is_empty():
            return False
        if self.pid and info.pid not in self.pid:
            return False
        if self.comm and info.comm not in self.comm:
            return False
        if self.uid and info.uid not in self.uid:
            return False
        if self.cmdline is not None and not self.cmdline.search(info.cmdline):
            return False
        if self.cgroup and not any(
            _under(path, prefix) for path in info.cgroups for prefix in self.cgroup
        ):
            return False
        if self.unit and not any(
            unit in path.split("/") for path in info.cgroups for unit in self.unit
        ):
            return False
        return True


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def process_info(pid: int) -> ProcessInfo | None:
    """Read what selectors need about ``pid``; ``None`` if it exited or is a kernel thread."""
    base = PROC / str(pid)
    try:
        status = (base / "status").read_text()
        raw_cmdline = (base / "cmdline").read_bytes()
        cgroup_text = (base / "cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields: dict[str, str] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    try:
        tgid = int(fields["Tgid"])
        ppid = int(fields["PPid"])
        uid = int(fields["Uid"].split()[1])  # effective uid
    except (KeyError, ValueError, IndexError):
        return None
    if tgid != pid:
        return None
    if not raw_cmdline and ppid in (0, 2):
        return None  # kernel thread: never a target
    cgroups = tuple(
        line.split(":", 2)[2] for line in cgroup_text.splitlines() if line.count(":") >= 2
    )
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        comm=fields.get("Name", ""),
        cmdline=raw_cmdline.replace(b"\0", b" ").decode(errors="replace").strip(),
        uid=uid,
        cgroups=cgroups,
    )


def all_pids() -> list[int]:
    """Every process id currently in /proc."""
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def scan(selector: Selector, pids: list[int] | None = None) -> list[int]:
    """Processes (optionally among ``pids``) that ``selector`` matches, sorted."""
    if selector.is_empty():
        return []
    if pids is not None:
        candidates = pids
    else:
        candidates = selector.pid or all_pids()
    found = []
    for pid in candidates:
        info = process_info(pid)
        if info is not None and selector.matches(info):
            found.append(pid)
    return sorted(found)
