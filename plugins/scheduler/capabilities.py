"""What the running kernel offers the scheduler plugin, as capability records.

Each capability is ``{"available": bool, "reason": str}``; the reason says
why something is absent (e.g. "kernel has no /sys/kernel/sched_ext").
Detection only reads; it is run once at start-up and cached.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from plugins.scheduler import cgroups, microvm, sched_ext, sysctl, tasks
from plugins.scheduler.microvm import paths, toolchain

_LOGGER = logging.getLogger(__name__)


def _cap(available: bool, reason: str, **extra: Any) -> dict[str, Any]:
    return {"available": available, "reason": reason, **extra}


def _task_caps() -> dict[str, dict[str, Any]]:
    caps: dict[str, dict[str, Any]] = {}
    try:
        attr = tasks.get_attr(0)
        caps["task.policy"] = _cap(True, "sched_setattr/sched_getattr work")
        caps["task.nice"] = _cap(True, "setpriority per thread")
        # A kernel with EEVDF per-task slices reports the slice in sched_runtime.
        if attr.runtime:
            caps["task.slice"] = _cap(
                True,
                f"sched_runtime sets the EEVDF slice ({tasks.SLICE_MIN_NS // 1000} us.."
                f"{tasks.SLICE_MAX_NS // 1_000_000} ms; default {attr.runtime} ns)",
            )
        else:
            caps["task.slice"] = _cap(False, "sched_getattr reports no slice (pre-6.12 kernel)")
    except OSError as exc:
        reason = f"sched_getattr failed: {exc}"
        for name in ("task.policy", "task.nice", "task.slice"):
            caps[name] = _cap(False, reason)
    caps["task.rt"] = _cap(
        True, "SCHED_FIFO/RR only with safety.allow_realtime and a priority cap; RT throttle on"
    )
    caps["task.affinity"] = _cap(True, "sched_setaffinity")
    slack = Path(f"/proc/{os.getpid()}/timerslack_ns")
    caps["task.timer_slack"] = (
        _cap(True, "/proc/<tid>/timerslack_ns")
        if slack.exists()
        else _cap(False, "/proc/<pid>/timerslack_ns missing (kernel < 4.6)")
    )
    autogroup = Path(f"/proc/{os.getpid()}/autogroup")
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if not autogroup.exists():
        caps["task.autogroup"] = _cap(False, "kernel built without CONFIG_SCHED_AUTOGROUP")
    elif enabled.exists() and enabled.read_text().strip() == "0":
        caps["task.autogroup"] = _cap(
            True, "autogroup nice is writable but kernel.sched_autogroup_enabled=0 (no effect)"
        )
    else:
        caps["task.autogroup"] = _cap(True, "/proc/<pid>/autogroup (session-wide nice)")
    return caps


def _cgroup_caps(hierarchies: dict[str, cgroups.Hierarchy]) -> dict[str, dict[str, Any]]:
    caps: dict[str, dict[str, Any]] = {}
    for knob, controller in cgroups.KNOB_CONTROLLER.items():
        name = f"cgroup.{knob}"
        hierarchy = hierarchies.get(controller)
        if hierarchy is None:
            caps[name] = _cap(False, f"no {controller} controller mounted (v1) or enabled (v2)")
            continue
        path = hierarchy.mount / hierarchy.knob_file(knob)
        if hierarchy.version == 2 and not path.exists():
            # The v2 root has no cpu.* files; look at what children get.
            path = hierarchy.mount / "cgroup.subtree_control"
        if path.exists():
            caps[name] = _cap(
                True,
                f"cgroup v{hierarchy.version} {hierarchy.knob_file(knob)} at {hierarchy.mount}",
            )
        else:
            caps[name] = _cap(False, f"{path} does not exist on this kernel")
    return caps


def detect() -> dict[str, dict[str, Any]]:
    """Detect every knob and backend; cheap enough for start-up, not per call."""
    hierarchies = cgroups.detect_hierarchies()
    caps = {**_task_caps(), **_cgroup_caps(hierarchies)}
    present = set(sysctl.available_sysctls())
    for name in sysctl.SYSCTL_RANGES:
        caps[f"sysctl.{name}"] = (
            _cap(True, f"/proc/sys/kernel/{name}")
            if name in present
            else _cap(False, f"kernel has no /proc/sys/kernel/{name}")
        )
    ok, reason = sysctl.debugfs_status()
    caps["debugfs"] = _cap(ok, reason)
    ext = sched_ext.detect()
    caps["sched_ext"] = _cap(ext["available"], ext["reason"])
    caps["sched_ext.verify"] = _scx_verify_cap()
    return caps


def _scx_verify_cap() -> dict[str, Any]:
    """Whether a sched_ext program can be verified here: compiled, then run in the micro-VM.

    Separate from ``sched_ext`` (can this kernel run one): a sched_ext host
    installed with the package's Depends alone has neither clang nor qemu
    (both Suggests), and an agent must not plan a program nothing can verify.
    """
    try:
        # cache_path, not cache_dir: detection only reads (no directory made).
        why = microvm.available(paths.cache_path())
        if why is None:
            toolchain.find_clang()
    except (OSError, RuntimeError) as err:
        why = str(err)
    if why is not None:
        return _cap(False, f"a sched_ext program cannot be verified here: {why}")
    return _cap(True, "clang >= 16 compiles a program and the micro-VM runs its kernel and "
                      "dynamic stages")
