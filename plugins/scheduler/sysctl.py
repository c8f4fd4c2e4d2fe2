"""Global scheduler knobs: ``/proc/sys/kernel/sched_*`` sysctls and debugfs knobs.

Only sysctls that exist on the running kernel and whose name starts with
``sched_`` can be written; the policy schema narrows that further to an
allow-list with ranges (:data:`SYSCTL_RANGES`).  EEVDF's debugfs knobs
(``/sys/kernel/debug/sched/base_slice_ns`` ...) are often absent or locked
(lockdown, debugfs not mounted); they are then reported as an unavailable
capability and a policy that uses them fails validation - never the daemon.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

SYSCTL_DIR = Path("/proc/sys/kernel")
DEBUGFS_SCHED = Path("/sys/kernel/debug/sched")

# Sysctls a T1 policy may set, with the range the schema accepts.  Ranges
# are what the kernel accepts narrowed to sane values; sched_rt_runtime_us
# cannot be -1 (that would switch the RT throttle off, which no policy may).
SYSCTL_RANGES: dict[str, tuple[int, int]] = {
    "sched_autogroup_enabled": (0, 1),
    "sched_cfs_bandwidth_slice_us": (1000, 100_000),
    "sched_child_runs_first": (0, 1),
    "sched_rr_timeslice_ms": (1, 1000),
    "sched_rt_period_us": (100_000, 10_000_000),
    "sched_rt_runtime_us": (0, 9_500_000),
    "sched_util_clamp_max": (0, 1024),
    "sched_util_clamp_min": (0, 1024),
    "sched_util_clamp_min_rt_default": (0, 1024),
    "sched_energy_aware": (0, 1),
}

DEBUGFS_KNOBS: dict[str, tuple[int, int]] = {
    "base_slice_ns": (100_000, 100_000_000),
    "migration_cost_ns": (0, 10_000_000),
    "nr_migrate": (1, 1024),
}


def available_sysctls() -> list[str]:
    """``sched_*`` sysctl names present on this kernel."""
    try:
        return sorted(p.name for p in SYSCTL_DIR.iterdir() if p.name.startswith("sched_"))
    except OSError:
        return []


def _sysctl_path(name: str) -> Path:
    if not name.startswith("sched_") or "/" in name:
        raise ValueError(f"not a scheduler sysctl: {name!r}")
    return SYSCTL_DIR / name


def read_sysctl(name: str) -> str:
    """Current value of ``kernel.<name>`` as the kernel prints it."""
    return _sysctl_path(name).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    """Write ``kernel.<name>``."""
    _sysctl_path(name).write_text(str(value))


def debugfs_status() -> tuple[bool, str]:
    """Whether the debugfs sched knobs can be written, and why not."""
    if not DEBUGFS_SCHED.is_dir():
        if not Path("/sys/kernel/debug").is_dir() or not os.listdir("/sys/kernel/debug"):
            return False, "debugfs is not mounted (or hidden): sched debug knobs locked"
        return False, f"{DEBUGFS_SCHED} does not exist (kernel without SCHED_DEBUG or locked)"
    probe = DEBUGFS_SCHED / "base_slice_ns"
    if not os.access(probe, os.W_OK):
        return False, f"{probe} is not writable (kernel lockdown?)"
    try:
        probe.write_text(probe.read_text().strip())
    except OSError as exc:
        return False, f"{probe} refused a same-value write: {exc.strerror} (locked)"
    return True, "writable"


def read_debugfs(name: str) -> str:
    """Current value of debugfs knob ``name``."""
    return (DEBUGFS_SCHED / name).read_text().strip()


def write_debugfs(name: str, value: str) -> None:
    """Write debugfs knob ``name``."""
    if name not in DEBUGFS_KNOBS:
        raise ValueError(f"debugfs knob {name!r} not allowed")
    (DEBUGFS_SCHED / name).write_text(str(value))
