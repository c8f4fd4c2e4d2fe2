"""Per-task I/O priority (read with ioprio_get) and the processes a group targets.

The priorities a policy sets are written by the core's actuator (the
``ioprio`` knob, :mod:`plugins.io.knobs`); this module reads them for the
plan and the capability report.

An I/O priority is a class (``none`` = follow the CPU nice, ``rt``, ``be``
best-effort, ``idle``) and a level 0..7 (0 highest).  It is per thread; a
thread forked later inherits it.  A group's targets are the processes its
``match`` selects (``comm`` names and/or ``pids``) with their descendants,
and every thread of each.  A task is named by ``tid`` and its start time,
so a later task that reuses the tid is not touched by a restore.
"""

from __future__ import annotations

import ctypes
import os
import platform

from schedcpd.plugin_api import GroupMatch, procfs

CLASSES = {"none": 0, "rt": 1, "be": 2, "idle": 3}
CLASS_NAMES = {v: k for k, v in CLASSES.items()}
_SHIFT = 13
_WHO_PROCESS = 1
_NR = {"x86_64": (251, 252), "aarch64": (30, 31)}  # (ioprio_set, ioprio_get)
_libc = ctypes.CDLL(None, use_errno=True)


class TaskGone(Exception):
    """The task exited (or its tid now names another task)."""


def value(cls: str, level: int) -> int:
    """The raw ioprio of ``cls`` and ``level`` (``none`` has level 0)."""
    return (CLASSES[cls] << _SHIFT) | (0 if cls == "none" else level)


def describe(raw: int) -> str:
    """``be/4``-style text of a raw ioprio."""
    cls = CLASS_NAMES.get(raw >> _SHIFT, str(raw >> _SHIFT))
    return cls if cls == "none" else f"{cls}/{raw & 7}"


def _nr(index: int) -> int:
    try:
        return _NR[platform.machine()][index]
    except KeyError as err:
        raise OSError(f"ioprio syscalls unknown on {platform.machine()}") from err


def get(tid: int) -> int:
    """The raw ioprio of thread ``tid``; :class:`TaskGone` if it does not exist."""
    res = _libc.syscall(_nr(1), _WHO_PROCESS, tid)
    if res < 0:
        err = ctypes.get_errno()
        if err == 3:  # ESRCH
            raise TaskGone(f"task {tid} is gone")
        raise OSError(err, os.strerror(err))
    return int(res)


def available() -> tuple[bool, str]:
    """Whether ioprio_get works here."""
    try:
        get(os.getpid())
    except OSError as err:
        return False, f"ioprio_get failed: {err}"
    return True, ""


start_time = procfs.task_start_time
"""Start time (clock ticks) of a task, ``None`` when it is gone (in procfs, shared)."""

threads = procfs.thread_ids
"""Thread ids of a process (empty when it is gone; in procfs, shared)."""


Selector = GroupMatch
"""A group's ``match`` (shared by the plugins: ``plugin_api.GroupMatch``)."""
