"""cgroup knobs the systemd way: runtime properties of the targets' own units.

On a host where systemd is PID 1 and the cgroup tree is v2, systemd owns
the tree.  Moving a service's process into a cgroup of our own would take
it out of its unit (``systemctl stop`` would no longer find it, and its CPU
time would be charged elsewhere), and systemd re-applies its own values to
the cgroups it manages whenever it re-realises a unit.  So there the plugin
never creates a cgroup and never moves a process: a group's cgroup knobs
become properties of the unit that holds the group's targets, set through
systemd's ``SetUnitProperties(unit, runtime=true, ...)``
(:mod:`plugins.scheduler.systemd`):

==============  ===========================================================
policy knob     unit property
==============  ===========================================================
``shares``      ``CPUWeight`` (systemd's own shares -> weight conversion)
``idle=true``   ``CPUWeight=0``, systemd's "idle" (cpu.idle = 1; systemd 252+)
``quota_us``    ``CPUQuotaPerSecUSec`` = quota_us * 1 s / period_us
``period_us``   ``CPUQuotaPeriodUSec``
``cpus``        ``AllowedCPUs`` (cpuset.cpus)
==============  ===========================================================

A unit is the smallest thing systemd lets us weigh, so every process of
the unit must be a target of the group: matched by its selector, or (with
``descendants``) forked from a matched one.  A unit that also holds other
processes (a login session's scope, a service of which only one worker
matches) is refused with :class:`~schedcpd.errors.NotSupported` naming the
unit and the others, before anything is written.  Run the job in a unit of
its own (``systemd-run --scope ...``, or a service) or select it with
``match.unit``.  ``idle = false`` is the default state and sets nothing.

Every property is journaled like any other value (kind ``unit_property``,
key ``unit_property:<unit>:<property>``, the value systemd reported before),
restored with the same call and ``runtime=true``.  "Unset" priors
(``CPUWeight`` 2^64-1, ``AllowedCPUs`` empty, quota infinity) are written
back as such, which systemd records as an empty assignment: the unit's
effective configuration is what it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from plugins.scheduler import cgroups, policy, tasks
from plugins.scheduler.cgroups import Hierarchy
from plugins.scheduler.systemd import SystemdError
from schedcpd.plugin_api import InvalidArgument, NotSupported

_LOGGER = logging.getLogger(__name__)

BACKENDS = ("auto", "cgroupfs", "systemd")
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")
KIND_UNIT = "unit_property"
USEC_INFINITY = 2**64 - 1
WEIGHT_IDLE = 0
#: the order properties are set in (period before the quota it divides)
PROPERTY_ORDER = ("CPUWeight", "CPUQuotaPeriodUSec", "CPUQuotaPerSecUSec", "AllowedCPUs")


class Units(Protocol):
    """What the backend needs from systemd (:class:`plugins.scheduler.systemd.SystemdClient`)."""

    def unit_of(self, pid: int) -> str:
        """The system manager's unit of ``pid``."""

    def processes(self, unit: str) -> list[int]:
        """Every process in ``unit``'s cgroup subtree."""


    def get(self, unit: str, prop: str) -> Any:
        """A property's current value."""

    def set(self, unit: str, values: dict[str, Any]) -> None:
        """Set properties for this boot (``runtime=true``)."""

    def start_scope(self, name: str, pids: list[int], slice_: str, description: str) -> None:
        """Start a transient scope holding ``pids``."""

    def stop(self, unit: str) -> None:
        """Stop ``unit`` and wait until it is inactive or gone."""


def systemd_booted(runtime_dir: Path = SYSTEMD_RUNTIME_DIR) -> bool:
    """Whether systemd is the init system (``sd_booted()``: /run/systemd/system exists)."""
    return runtime_dir.is_dir()


def choose_backend(setting: str, booted: bool,
                   hierarchies: dict[str, Hierarchy]) -> tuple[str, str]:
    """(``"cgroupfs"`` or ``"systemd"``, why) for ``[plugins.scheduler] cgroup_backend``.

    ``auto`` picks systemd exactly when systemd is PID 1 and the ``cpu``
    controller is on the unified (v2) tree.  With systemd on a v1 or hybrid
    tree the plugin keeps its own cgroups in the v1 controllers (systemd
    dropped v1 support in 256).  ``systemd`` demands both; ``cgroupfs``
    forces the plugin's own cgroups (for hosts without systemd).
    """
    if setting not in BACKENDS:
        raise InvalidArgument(f"[plugins.scheduler] cgroup_backend = {setting!r}: "
                              f"must be one of {', '.join(BACKENDS)}")
    cpu = hierarchies.get("cpu")
    unified = cpu is not None and cpu.version == 2
    if setting == "cgroupfs":
        return "cgroupfs", "configured"
    if setting == "systemd":
        if not booted or not unified:
            raise InvalidArgument(
                "[plugins.scheduler] cgroup_backend = \"systemd\" needs systemd as PID 1 "
                f"(here: {'yes' if booted else 'no'}) and the cpu controller on cgroup v2 "
                f"(here: {f'v{cpu.version}' if cpu else 'none'})")
        return "systemd", "configured"
    if booted and unified:
        return "systemd", "systemd is PID 1 and owns the cgroup v2 tree"
    if booted:
        return "cgroupfs", "systemd is PID 1 but the cpu controller is on cgroup v1"
    return "cgroupfs", "no systemd (the plugin's own cgroups)"


def unit_properties(knobs: dict[str, Any]) -> dict[str, Any]:
    """A group's ``[group.cgroup]`` knobs as unit properties (journal form), in set order."""
    props: dict[str, Any] = {}
    if "shares" in knobs:
        props["CPUWeight"] = cgroups.shares_to_weight(int(knobs["shares"]))
    if knobs.get("idle") is True:
        props["CPUWeight"] = WEIGHT_IDLE
    if "quota_us" in knobs or "period_us" in knobs:
        period = int(knobs.get("period_us", 100_000))
        quota = int(knobs.get("quota_us", -1))
        if "period_us" in knobs:
            props["CPUQuotaPeriodUSec"] = period
        props["CPUQuotaPerSecUSec"] = (USEC_INFINITY if quota < 0
                                       else quota * 1_000_000 // period)
    if "cpus" in knobs:
        cpus = knobs["cpus"]
        props["AllowedCPUs"] = cgroups.parse_cpu_list(cpus) if isinstance(cpus, str) \
            else sorted(int(c) for c in cpus)
    return {name: props[name] for name in PROPERTY_ORDER if name in props}


def unit_key(unit: str, prop: str) -> str:
    """Journal key of a unit property."""
    return f"{KIND_UNIT}:{unit}:{prop}"


def parse_unit_key(key: str) -> tuple[str, str]:
    """(unit, property) of a :func:`unit_key` (unit names may contain ':')."""
    unit, _, prop = key[len(KIND_UNIT) + 1:].rpartition(":")
    return unit, prop


@dataclass(frozen=True)
class UnitPlan:
    """One unit that gets a group's properties, and the targets found in it."""

    unit: str
    targets: tuple[int, ...]
    properties: dict[str, Any]


def covered(pid: int, matched: set[int], descendants: bool) -> bool:
    """Whether ``pid`` is a target: matched itself, or forked from a matched process."""
    seen = 0
    while pid > 1 and seen < 4096:
        if pid in matched:
            return True
        if not descendants:
            return False
        parent = tasks.parent_of(pid)
        if parent is None:
            return False
        pid, seen = parent, seen + 1
    return False


class UnitGroups:
    """Plans a group's cgroup knobs onto the targets' units (whole units only)."""

    def __init__(self, units: Units) -> None:
        self.units = units

    def plan(self, group: policy.Group, pids: list[int], matched: set[int]) -> list[UnitPlan]:
        """The units of ``pids`` (the targets in scope) and what to set on each.

        ``matched`` is every process the group's selector matches now, in
        or out of scope: a unit qualifies when each of its processes is
        one of them or descends from one.  Raises ``NotSupported`` naming
        the first unit that holds anything else; nothing is written.
        """
        props = unit_properties(group.cgroup)
        if not props:
            return []
        by_unit: dict[str, list[int]] = {}
        for pid in pids:
            try:
                unit = self.units.unit_of(pid)
            except SystemdError as exc:
                if tasks.start_time(pid) is None:  # it exited meanwhile
                    continue
                raise NotSupported(f"group {group.name}: no systemd unit for pid {pid}: "
                                   f"{exc}") from exc
            by_unit.setdefault(unit, []).append(pid)
        plans = []
        for unit, found in sorted(by_unit.items()):
            others = [p for p in self.units.processes(unit)
                      if not covered(p, matched, group.descendants)]
            if others or unit.endswith(".slice"):
                names = ", ".join(f"{p} ({_comm(p)})" for p in others[:5])
                raise NotSupported(
                    f"group {group.name}: cgroup knobs on a systemd host apply to whole "
                    f"units, and {unit} also runs {len(others)} other process(es): {names}. "
                    "schedcpd does not move processes out of their units; start the "
                    "targets in a unit of their own (systemd-run --scope, a service) or "
                    "select the unit (match.unit)")
            plans.append(UnitPlan(unit, tuple(sorted(found)), props))
        return plans


def sandbox_units(owner: str, role: str) -> tuple[str, str]:
    """(scope, slice) of the verifier's sandbox process ``role`` (a group, or "hogs").

    A dash in a slice name is a level of the tree: ``schedcp-verify-<id>.slice``
    sits in ``schedcp-verify.slice`` in ``schedcp.slice``, at the top beside
    system.slice and user.slice, as the scratch cgroup does on cgroupfs.
    """
    owner_name, role_name = cgroups.safe_name(owner), cgroups.safe_name(role)
    return f"schedcp-{owner_name}-{role_name}.scope", f"schedcp-{owner_name}.slice"


def place_in_scope(units: Units, owner: str, role: str, pid: int,
                   timeout: float = 10.0) -> str:
    """Move the daemon's own sandbox child ``pid`` into a transient scope of its own.

    Only the verifier's processes are placed this way: they are ours, and a
    scope of their own makes each group's worker a whole unit.  Returns the
    scope once systemd reports the process in it.
    """
    scope, slice_ = sandbox_units(owner, role)
    units.start_scope(scope, [pid], slice_, f"schedcp verifier sandbox {owner} ({role})")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if units.unit_of(pid) == scope:
                return scope
        except SystemdError:
            pass  # the job may not have attached it yet
        if time.monotonic() > deadline:
            raise SystemdError("org.freedesktop.DBus.Error.Timeout",
                               f"pid {pid} not in {scope} after {timeout} s")
        time.sleep(0.02)


def release_sandbox(units: Units, owner: str) -> list[str]:
    """Stop the slices :func:`place_in_scope` made for ``owner``'s run; return them.

    A scope goes away with its last process, but the slices systemd made for
    it (``schedcp-verify-<id>.slice`` and its parents) stay active until
    stopped: left alone, every verification would add one to the tree.  The
    run's slice is stopped; then each parent that holds no process (the
    verifier runs one dynamic stage at a time, so an empty parent is ours
    and idle).
    """
    _, slice_ = sandbox_units(owner, "-")
    levels = slice_.removesuffix(".slice").split("-")
    stopped = []
    for depth in range(len(levels), 0, -1):
        unit = "-".join(levels[:depth]) + ".slice"
        if depth < len(levels):
            try:
                if units.processes(unit):
                    break
            except SystemdError as err:
                if not err.no_unit:
                    raise
                continue
        units.stop(unit)
        stopped.append(unit)
    return stopped


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
