"""Utilisation clamps: per task (``sched_setattr``) and per cgroup v2 (``cpu.uclamp.*``).

The clamps a policy sets are written by the core's actuator (the ``uclamp``
knob, :mod:`plugins.dvfs.knobs`); this module reads them for the plan and
sets them only where nothing is journaled: the capability probe (this
thread's own clamps set to themselves) and verifier stage 4 (a test task
the check starts and kills).

A task's clamp is a pair ``(min, max)`` on the kernel's capacity scale
0..1024: the scheduler treats the task as needing at least ``min`` and at
most ``max`` of a CPU's capacity when it picks a frequency (schedutil) or a
CPU (big.LITTLE).  It is per thread and inherited at fork.  It is read with
``sched_getattr`` (VER1 size, 56 bytes) and written with ``sched_setattr``
and ``SCHED_FLAG_KEEP_ALL | SCHED_FLAG_UTIL_CLAMP_MIN | _MAX``, which leaves
the task's policy and nice alone.  A clamp value of ``-1`` resets it to
"not set" (the kernel's default, which ``sched_getattr`` shows as 0 / 1024):
a restore to the default writes ``-1``, so the task is left as it was found.

A kernel without ``CONFIG_UCLAMP_TASK`` refuses the flags with EOPNOTSUPP
(:func:`probe`), and has no ``cpu.uclamp.*`` files.

A cgroup's clamp is ``cpu.uclamp.min`` / ``cpu.uclamp.max`` in percent
(``"12.50"``, ``"max"``), in cgroup v2 directories that have the cpu
controller enabled (``CONFIG_UCLAMP_TASK_GROUP``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from pathlib import Path

from schedcpd.plugin_api import GroupMatch, procfs

SCALE = 1024
SCHED_FLAG_KEEP_POLICY = 0x08
SCHED_FLAG_KEEP_PARAMS = 0x10
SCHED_FLAG_UTIL_CLAMP_MIN = 0x20
SCHED_FLAG_UTIL_CLAMP_MAX = 0x40
RESET = -1
_SIZE_VER1 = 56
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275)}
CGROUP_FILES = ("cpu.uclamp.min", "cpu.uclamp.max")


class _Attr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64),
                ("sched_util_min", ctypes.c_uint32), ("sched_util_max", ctypes.c_uint32)]


class TaskGone(Exception):
    """The task exited."""


class NoUclamp(OSError):
    """The kernel has no utilisation clamping (``CONFIG_UCLAMP_TASK`` off): EOPNOTSUPP."""


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _nr(index: int) -> int:
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise OSError(errno.ENOSYS, f"sched_setattr syscall number unknown on {machine}")
    return _SYSCALLS[machine][index]


def _fail(tid: int, what: str) -> None:
    err = ctypes.get_errno()
    if err == errno.ESRCH:
        raise TaskGone(f"task {tid} exited")
    if err == errno.EOPNOTSUPP:
        raise NoUclamp(err, f"{what}({tid}) with util-clamp flags: EOPNOTSUPP (the kernel "
                       "has no CONFIG_UCLAMP_TASK)")
    raise OSError(err, f"{what}({tid}): {os.strerror(err)}")


def get(tid: int) -> tuple[int, int]:
    """``(util_min, util_max)`` of thread ``tid`` (0, 1024 when never set)."""
    attr = _Attr()
    if _libc().syscall(_nr(1), tid, ctypes.byref(attr), _SIZE_VER1, 0):
        _fail(tid, "sched_getattr")
    return int(attr.sched_util_min), int(attr.sched_util_max)


def set_(tid: int, util_min: int, util_max: int) -> None:
    """Set both clamps of ``tid`` (``RESET`` = back to "not set"), policy and nice kept."""
    attr = _Attr()
    attr.size = _SIZE_VER1
    attr.sched_flags = (SCHED_FLAG_KEEP_POLICY | SCHED_FLAG_KEEP_PARAMS
                        | SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX)
    attr.sched_util_min = util_min & 0xFFFFFFFF
    attr.sched_util_max = util_max & 0xFFFFFFFF
    if _libc().syscall(_nr(0), tid, ctypes.byref(attr), 0):
        _fail(tid, "sched_setattr")


def restore_args(prior: tuple[int, int]) -> tuple[int, int]:
    """The ``set_`` arguments that put ``prior`` back (the defaults as "not set")."""
    lo, hi = prior
    return (RESET if lo == 0 else lo, RESET if hi == SCALE else hi)


def probe() -> tuple[bool, str]:
    """Whether this kernel clamps: set this thread's own clamps to what they are."""
    tid = 0
    try:
        lo, hi = get(tid)
        set_(tid, *restore_args((lo, hi)))
    except NoUclamp as err:
        return False, str(err.strerror)
    except OSError as err:
        return False, f"sched_setattr with util-clamp flags fails: {err}"
    return True, ""


start_time = procfs.task_start_time
"""Start time (clock ticks) of a task, ``None`` when it is gone (in procfs, shared)."""

threads = procfs.thread_ids
"""Thread ids of a process (empty when it is gone; in procfs, shared)."""


Selector = GroupMatch
"""A group's ``match`` (shared by the plugins: ``plugin_api.GroupMatch``)."""


def cgroup_v2_root() -> Path | None:
    """The mounted cgroup v2 hierarchy (unified or hybrid), or ``None``."""
    for path in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (path / "cgroup.controllers").is_file():
            return path
    return None


def cgroup_available(root: Path | None) -> tuple[bool, str]:
    """Whether cgroup v2 clamps can be set under ``root``, and why not."""
    if root is None:
        return False, "no cgroup v2 hierarchy is mounted"
    controllers = (root / "cgroup.controllers").read_text().split()
    if "cpu" not in controllers:
        return False, (f"the cgroup v2 hierarchy at {root} has no cpu controller (it is bound "
                       "to cgroup v1 here), so there are no cpu.uclamp.* files")
    if not (root / "cpu.uclamp.min").exists() and not any(
            (d / "cpu.uclamp.min").exists() for d in root.iterdir() if d.is_dir()):
        return False, ("no cpu.uclamp.* files under the cpu controller (the kernel has no "
                       "CONFIG_UCLAMP_TASK_GROUP, or no child cgroup enables cpu)")
    return True, ""


def parse_percent(text: str) -> float:
    """A ``cpu.uclamp.*`` value as a percentage (``max`` = 100)."""
    return 100.0 if text.strip() == "max" else float(text)


def cgroup_path(root: Path, rel: str) -> Path:
    """The directory of cgroup ``rel`` (relative to ``root``; no ``..``)."""
    parts = [p for p in rel.strip("/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"cgroup path {rel!r} must not contain . or ..")
    return root.joinpath(*parts)
