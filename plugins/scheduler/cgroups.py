"""Per-cgroup knobs: the plugin's own ``schedcp.<owner>.<group>`` cgroups.

The plugin never changes cgroups it did not create.  For a policy group
that sets cgroup knobs it creates ``<mount>/schedcp.<owner>.<group>`` (or,
with a configured parent, ``<mount>/<parent>/schedcp.<owner>.<group>``) in the
hierarchy that holds the controller (cgroup v1 ``cpu`` / ``cpuset``, or the
v2 unified tree when the controller is enabled there), writes the knobs
there and moves only the target tasks in (per thread on v1 through
``tasks``; per process on v2 through ``cgroup.procs``).

Policy-level knob names are version-neutral; :data:`KNOB_FILES` maps them to
files.  By default the groups sit at the top of the hierarchy, beside the
root's other cgroups (and, on v1, its tasks and autogroups): a group's
``shares`` and ``idle`` then count against the rest of the machine.  Under a
shared parent they would only count against the other policy groups, since
the parent itself competes at the default weight.  ``shares`` maps to v2
``cpu.weight`` with systemd's conversion; ``quota_us``/``period_us`` map to
v2 ``cpu.max``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from plugins.scheduler.tasks import TaskGone, has_exited

_LOGGER = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")

CPU_KNOBS = ("shares", "idle", "quota_us", "period_us")
CPUSET_KNOBS = ("cpus",)
KNOB_CONTROLLER = {**{k: "cpu" for k in CPU_KNOBS}, **{k: "cpuset" for k in CPUSET_KNOBS}}

# (v1 file, v2 file) per policy knob.
KNOB_FILES = {
    "shares": ("cpu.shares", "cpu.weight"),
    "idle": ("cpu.idle", "cpu.idle"),
    "quota_us": ("cpu.cfs_quota_us", "cpu.max"),
    "period_us": ("cpu.cfs_period_us", "cpu.max"),
    "cpus": ("cpuset.cpus", "cpuset.cpus"),
}

_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Hierarchy:
    """Where a controller lives: mount point and cgroup version."""

    controller: str
    mount: Path
    version: int

    def path(self, relative: str) -> Path:
        """Absolute directory of cgroup ``relative`` (``"/a/b"``) in this hierarchy."""
        return self.mount / relative.lstrip("/")

    @property
    def member_file(self) -> str:
        """File that moves a task in: per thread on v1, per process on v2."""
        return "tasks" if self.version == 1 else "cgroup.procs"

    def knob_file(self, knob: str) -> str:
        """The interface file for a policy-level knob in this version."""
        v1, v2 = KNOB_FILES[knob]
        return v1 if self.version == 1 else v2


def _mounts() -> list[tuple[str, Path, str]]:
    """(fstype, mount point, super options) from /proc/self/mountinfo."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        found.append((rfields[0], Path(fields[4]), rfields[2]))
    return found


def detect_hierarchies() -> dict[str, Hierarchy]:
    """Find the ``cpu`` and ``cpuset`` controllers (v1 mount first, then v2)."""
    result: dict[str, Hierarchy] = {}
    v2_mounts: list[Path] = []
    for fstype, mount, options in _mounts():
        if fstype == "cgroup":
            opts = set(options.split(","))
            for controller in ("cpu", "cpuset"):
                if controller in opts and controller not in result:
                    result[controller] = Hierarchy(controller, mount, 1)
        elif fstype == "cgroup2":
            v2_mounts.append(mount)
    for mount in v2_mounts:
        try:
            enabled = (mount / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        for controller in ("cpu", "cpuset"):
            if controller in enabled and controller not in result:
                result[controller] = Hierarchy(controller, mount, 2)
    return result


def safe_name(text: str) -> str:
    """A cgroup directory name derived from ``text`` (no '/' or odd characters)."""
    name = _NAME_RE.sub("_", text).strip(".") or "_"
    return name[:100]


GROUP_PREFIX = "schedcp."


def group_relative(parent: str, owner: str, group: str) -> str:
    """Relative path of the plugin's cgroup for ``owner``'s policy group.

    ``parent`` empty (the default) puts it at the top of the hierarchy.
    """
    name = f"{GROUP_PREFIX}{safe_name(owner)}.{safe_name(group)}"
    return f"/{safe_name(parent)}/{name}" if parent else f"/{name}"


def task_cgroup(tid: int, hierarchy: Hierarchy) -> str:
    """The cgroup path of ``tid`` in ``hierarchy`` (from /proc/<tid>/cgroup)."""
    try:
        text = Path(f"/proc/{tid}/cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise TaskGone(f"task {tid} exited") from exc
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if (hierarchy.version == 2 and controllers == "") or (
            hierarchy.version == 1 and hierarchy.controller in controllers.split(",")
        ):
            if path == "/" and has_exited(tid):
                raise TaskGone(f"task {tid} exited")  # a zombie reads as the root
            return path
    raise OSError(f"task {tid} has no {hierarchy.controller} cgroup")


def move_task(tid: int, hierarchy: Hierarchy, relative: str) -> None:
    """Move thread ``tid`` (v1) or its process (v2) into cgroup ``relative``."""
    target = hierarchy.path(relative) / hierarchy.member_file
    try:
        target.write_text(str(tid))
    except ProcessLookupError as exc:
        raise TaskGone(f"task {tid} exited") from exc


def parse_cpu_list(text: str) -> list[int]:
    """Parse ``"0-2,5"`` into ``[0, 1, 2, 5]``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cpus)


def format_cpu_list(cpus: list[int]) -> str:
    """Format CPUs the way the kernel prints them (``"0-2,5"``)."""
    ranges: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares to v2 cpu.weight (systemd's linear mapping)."""
    return max(1, min(10000, 1 + ((shares - 2) * 9999) // 262142))


def knob_value(hierarchy: Hierarchy, knob: str, value: object, period_us: int) -> str:
    """The exact text to write (and to expect on read-back) for a policy knob."""
    if knob == "shares":
        shares = int(value)  # type: ignore[call-overload]
        return str(shares) if hierarchy.version == 1 else str(shares_to_weight(shares))
    if knob == "idle":
        return "1" if value else "0"
    if knob in ("quota_us", "period_us"):
        if hierarchy.version == 1:
            return str(int(value))  # type: ignore[call-overload]
        raise ValueError("v2 quota/period are written together: use cpu_max_value")
    if knob == "cpus":
        cpus = parse_cpu_list(value) if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        return format_cpu_list(cpus)
    raise ValueError(f"unknown cgroup knob {knob!r}")


def cpu_max_value(quota_us: int, period_us: int) -> str:
    """v2 ``cpu.max`` text for a quota (-1 = no limit) and period."""
    return f"{'max' if quota_us < 0 else quota_us} {period_us}"


def read_file(path: Path) -> str:
    """Read an interface file, stripped."""
    return path.read_text().strip()


def write_file(path: Path, text: str) -> None:
    """Write an interface file (raises ``OSError`` with the path on failure)."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise OSError(exc.errno, f"writing {text!r} to {path}: {exc.strerror}") from exc


def create_group(hierarchy: Hierarchy, relative: str) -> bool:
    """Create cgroup ``relative`` (and its parent); True when it did not exist.

    A new v1 cpuset cgroup starts with empty ``cpus``/``mems``, which refuse
    tasks, so both are copied from the parent.
    """
    path = hierarchy.path(relative)
    parent = path.parent
    if not parent.exists():
        parent.mkdir()
        _init_cpuset(hierarchy, parent)
    if path.exists():
        return False
    path.mkdir()
    _init_cpuset(hierarchy, path)
    return True


def controller_enabled(hierarchy: Hierarchy, relative: str) -> bool:
    """Whether ``relative``'s children get the controller (v2 ``cgroup.subtree_control``).

    Always true on v1, where a hierarchy is its controller.
    """
    if hierarchy.version == 1:
        return True
    path = hierarchy.path(relative) / "cgroup.subtree_control"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return hierarchy.controller in read_file(path).split()


def set_controller(hierarchy: Hierarchy, relative: str, enabled: bool) -> None:
    """Enable (``+cpu``) or disable (``-cpu``) the controller for ``relative``'s children (v2)."""
    if hierarchy.version == 1:
        return
    sign = "+" if enabled else "-"
    write_file(hierarchy.path(relative) / "cgroup.subtree_control", sign + hierarchy.controller)


def controller_users(hierarchy: Hierarchy, relative: str, owner: str) -> list[str]:
    """Children of ``relative`` that still need its controller enabled (v2).

    The plugin's groups of owners other than ``owner`` (whose own groups are
    being restored with it) and any child that passes the controller on
    itself (the kernel refuses ``-cpu`` then, EBUSY).
    """
    mine = f"{GROUP_PREFIX}{safe_name(owner)}."
    users = []
    try:
        children = sorted(p for p in hierarchy.path(relative).iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    for child in children:
        try:
            passes_on = hierarchy.controller in read_file(child / "cgroup.subtree_control").split()
        except OSError:
            passes_on = False
        if (child.name.startswith(GROUP_PREFIX) and not child.name.startswith(mine)) \
                or passes_on:
            users.append(child.name)
    return users


def _init_cpuset(hierarchy: Hierarchy, path: Path) -> None:
    if hierarchy.controller != "cpuset" or hierarchy.version != 1:
        return
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not read_file(path / name):
            write_file(path / name, read_file(path.parent / name))


def members(hierarchy: Hierarchy, relative: str) -> list[int]:
    """Task (v1) or process (v2) ids in cgroup ``relative``."""
    path = hierarchy.path(relative) / hierarchy.member_file
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def remove_group(hierarchy: Hierarchy, relative: str) -> str:
    """Remove cgroup ``relative`` if it is empty; return what happened."""
    path = hierarchy.path(relative)
    if not path.exists():
        return "already gone"
    left = members(hierarchy, relative)
    if left:
        return f"not removed: still holds tasks {left[:10]}"
    try:
        os.rmdir(path)
    except OSError as exc:
        return f"not removed: {exc.strerror}"
    return "removed"
