"""The small table of per-task syscalls the core actuator can make for plugins.

Each entry reads and writes one value of one thread; it knows the syscall's
calling convention, not what any subsystem means by the value.  A plugin
names the entry in a ``syscall`` knob declaration (:mod:`schedcpd.knobs`).

- ``ioprio_set``: the I/O priority word (``class << 13 | level``) of a
  thread, read with ``ioprio_get`` (``IOPRIO_WHO_PROCESS``).  Restore writes
  the prior word back.
- ``sched_setattr.uclamp``: a thread's utilisation clamps ``[min, max]``
  (0..1024), read with ``sched_getattr`` and written with
  ``SCHED_FLAG_KEEP_ALL | UTIL_CLAMP_MIN | UTIL_CLAMP_MAX`` (policy and nice
  kept).  ``reset`` puts the kernel defaults (0, 1024) back as "not set"
  (-1), so a task is left as it was found.

A thread that is gone raises :class:`ProcessLookupError`; any other refusal
is an :class:`OSError` with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_NUMBERS = {  # name -> {machine: number}
    "ioprio_set": {"x86_64": 251, "aarch64": 30, "riscv64": 30},
    "ioprio_get": {"x86_64": 252, "aarch64": 31, "riscv64": 31},
    "sched_setattr": {"x86_64": 314, "aarch64": 274, "riscv64": 274},
    "sched_getattr": {"x86_64": 315, "aarch64": 275, "riscv64": 275},
}
_IOPRIO_WHO_PROCESS = 1
_UCLAMP_FLAGS = 0x08 | 0x10 | 0x20 | 0x40  # KEEP_POLICY | KEEP_PARAMS | UTIL_CLAMP_MIN | _MAX
_UCLAMP_SCALE = 1024
_ATTR_SIZE_VER1 = 56


class _Attr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64),
                ("sched_util_min", ctypes.c_uint32), ("sched_util_max", ctypes.c_uint32)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(name: str, tid: int, *args: Any) -> int:
    machine = os.uname().machine
    number = _NUMBERS[name].get(machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"{name}: syscall number unknown on {machine}")
    result = int(_libc().syscall(number, *args))
    if result < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessLookupError(err, f"{name}({tid}): thread {tid} is gone")
        raise OSError(err, f"{name}({tid}): {os.strerror(err)}")
    return result


def _ioprio_read(tid: int) -> int:
    return _call("ioprio_get", tid, _IOPRIO_WHO_PROCESS, tid)


def _ioprio_write(tid: int, value: Any) -> None:
    _call("ioprio_set", tid, _IOPRIO_WHO_PROCESS, tid, int(value))


def _uclamp_read(tid: int) -> list[int]:
    attr = _Attr()
    _call("sched_getattr", tid, tid, ctypes.byref(attr), _ATTR_SIZE_VER1, 0)
    return [int(attr.sched_util_min), int(attr.sched_util_max)]


def _uclamp_write(tid: int, value: Any) -> None:
    lo, hi = (int(v) for v in value)
    attr = _Attr()
    attr.size = _ATTR_SIZE_VER1
    attr.sched_flags = _UCLAMP_FLAGS
    attr.sched_util_min = lo & 0xFFFFFFFF
    attr.sched_util_max = hi & 0xFFFFFFFF
    _call("sched_setattr", tid, tid, ctypes.byref(attr), 0)


def _uclamp_reset(tid: int, prior: Any) -> None:
    lo, hi = (int(v) for v in prior)
    _uclamp_write(tid, [-1 if lo == 0 else lo, -1 if hi == _UCLAMP_SCALE else hi])


@dataclass(frozen=True)
class Syscall:
    """How to read, write and reset one per-thread value."""

    name: str
    read: Callable[[int], Any]
    write: Callable[[int, Any], None]
    reset: Callable[[int, Any], None] | None = None


SYSCALLS: dict[str, Syscall] = {
    "ioprio_set": Syscall("ioprio_set", _ioprio_read, _ioprio_write),
    "sched_setattr.uclamp": Syscall("sched_setattr.uclamp", _uclamp_read, _uclamp_write,
                                    _uclamp_reset),
}
"""Named syscalls a ``syscall`` knob may declare."""
