"""Per-task scheduling knobs: policy, nice, slice, affinity, timer slack, autogroup nice.

Policy, nice and slice go through the ``sched_setattr``/``sched_getattr``
system calls (ctypes; Python has no binding for them).  Every knob is read
and written per thread id (tid); identity across time is ``(tid, start)``
where ``start`` is the task's start time in clock ticks (``/proc/<tid>/stat``
field 22), so a recycled pid is never mistaken for the task we changed.

Values are JSON-friendly so the journal can store them:

- ``policy``: ``"other" | "batch" | "idle" | "fifo:<prio>" | "rr:<prio>"``
  (``"deadline"`` is only read; we never write it);
- ``nice``: int -20..19;
- ``slice_ns``: int, EEVDF per-task slice (``sched_runtime``); 100 µs..100 ms;
- ``affinity``: sorted list of CPU numbers;
- ``timer_slack_ns``: int (``/proc/<tid>/timerslack_ns``; ``prctl`` only
  works on the calling thread);
- ``autogroup_nice``: int -20..19 (``/proc/<pid>/autogroup``; it belongs to
  the whole autogroup, i.e. the session, not to one task).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

PROC = Path("/proc")

SCHED_OTHER = 0
SCHED_FIFO = 1
SCHED_RR = 2
SCHED_BATCH = 3
SCHED_IDLE = 5
SCHED_DEADLINE = 6
SCHED_EXT = 7

SCHED_FLAG_RESET_ON_FORK = 0x01

POLICY_NAMES = {
    SCHED_OTHER: "other",
    SCHED_FIFO: "fifo",
    SCHED_RR: "rr",
    SCHED_BATCH: "batch",
    SCHED_IDLE: "idle",
    SCHED_DEADLINE: "deadline",
    SCHED_EXT: "ext",
}
POLICY_NUMBERS = {name: number for number, name in POLICY_NAMES.items()}
FAIR_POLICIES = ("other", "batch", "idle")
RT_POLICIES = ("fifo", "rr")

SLICE_MIN_NS = 100_000
SLICE_MAX_NS = 100_000_000

TASK_KNOBS = ("policy", "nice", "slice_ns", "affinity", "timer_slack_ns", "autogroup_nice")

_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275)}
_SCHED_ATTR_SIZE_VER0 = 48


class SchedAttr(ctypes.Structure):
    """``struct sched_attr`` (VER1 layout, 56 bytes)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


class TaskGone(Exception):
    """The task exited (or its pid now belongs to another task)."""


@dataclass(frozen=True)
class Attr:
    """The decoded fields of ``sched_getattr`` we manage."""

    policy: int
    flags: int
    nice: int
    priority: int
    runtime: int


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall_numbers() -> tuple[int, int]:
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise OSError(errno.ENOSYS, f"sched_setattr syscall number unknown on {machine}")
    return _SYSCALLS[machine]


def _raise_errno(tid: int, what: str) -> None:
    err = ctypes.get_errno()
    if err == errno.ESRCH:
        raise TaskGone(f"task {tid} exited")
    raise OSError(err, f"{what}({tid}): {os.strerror(err)}")


def get_attr(tid: int) -> Attr:
    """Read ``sched_getattr`` for ``tid``."""
    attr = SchedAttr()
    if _libc().syscall(_syscall_numbers()[1], tid, ctypes.byref(attr), ctypes.sizeof(attr), 0):
        _raise_errno(tid, "sched_getattr")
    return Attr(
        policy=attr.sched_policy,
        flags=attr.sched_flags,
        nice=attr.sched_nice,
        priority=attr.sched_priority,
        runtime=attr.sched_runtime,
    )


def set_attr(tid: int, value: Attr) -> None:
    """Write ``sched_setattr`` for ``tid`` (VER0 size: utilization clamps untouched)."""
    attr = SchedAttr()
    attr.size = _SCHED_ATTR_SIZE_VER0
    attr.sched_policy = value.policy
    # Keep reset-on-fork as the task had it; drop every other flag we read
    # back (util-clamp flags would need the VER1 fields).
    attr.sched_flags = value.flags & SCHED_FLAG_RESET_ON_FORK
    attr.sched_nice = value.nice
    attr.sched_priority = value.priority
    attr.sched_runtime = value.runtime
    if _libc().syscall(_syscall_numbers()[0], tid, ctypes.byref(attr), 0):
        _raise_errno(tid, "sched_setattr")


@functools.cache
def default_slice_ns() -> int:
    """The slice a task has when nobody set one (this daemon never sets its own)."""
    return get_attr(0).runtime or 0


def _slice_arg(current: Attr) -> int:
    """``sched_runtime`` that keeps the task's slice as it is.

    ``sched_getattr`` returns the slice whether or not it was set by hand;
    a value equal to the default is taken as "not set" (0), so rewriting the
    policy or nice does not pin a custom slice on the task.
    """
    if POLICY_NAMES.get(current.policy) not in FAIR_POLICIES:
        return 0
    return 0 if current.runtime == default_slice_ns() else current.runtime


def _stat_fields(tid: int) -> list[bytes] | None:
    """Fields of ``/proc/<tid>/stat`` after the comm (state first), or ``None``."""
    # Plain open(), not pathlib: the watcher asks this for every fork of a
    # managed tree, and pathlib's path building was most of the cost.
    try:
        with open(f"{PROC}/{tid}/stat", "rb") as stat:
            raw = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses; fields resume after the last ')'.
    return raw[raw.rindex(b")") + 2 :].split()


def start_time(tid: int) -> int | None:
    """Start time of ``tid`` in clock ticks, or ``None`` if it does not exist."""
    fields = _stat_fields(tid)
    return None if fields is None else int(fields[19])


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (0 for the kernel's own), or ``None`` if it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def started_at(start: int) -> float:
    """Wall-clock time (``time.time()`` seconds) of a task start in clock ticks.

    ``/proc/<tid>/stat`` counts ticks of boot time; the journal keeps wall
    time.  Ticks truncate, so the result is up to one tick early.
    """
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - start / _clock_ticks())


@functools.cache
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


PF_EXITING = 0x4  # include/linux/sched.h


def has_exited(tid: int) -> bool:
    """True when ``tid`` is gone, exiting or a zombie (exited, not yet reaped).

    An exiting task's ``/proc/<tid>/cgroup`` reads as the root cgroup (v1):
    without this check a managed task that is exiting looks moved out.
    """
    fields = _stat_fields(tid)
    return fields is None or fields[0] in (b"Z", b"X") or bool(int(fields[6]) & PF_EXITING)


def is_alive(tid: int, start: int) -> bool:
    """True when ``tid`` exists and is still the task that started at ``start``."""
    return start_time(tid) == start


def threads(pid: int) -> list[int]:
    """Thread ids of process ``pid`` (empty if it exited)."""
    try:
        return sorted(int(name) for name in os.listdir(PROC / str(pid) / "task"))
    except (FileNotFoundError, ProcessLookupError):
        return []


def children(tid: int) -> list[int]:
    """Processes forked by thread ``tid`` (``/proc/<tid>/task/<tid>/children``; empty if gone)."""
    try:
        with open(f"{PROC}/{tid}/task/{tid}/children", "rb") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def tgid_of(tid: int) -> int | None:
    """The process (thread group) id of ``tid``."""
    try:
        for line in (PROC / str(tid) / "status").read_text().splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _policy_name(attr: Attr) -> str:
    name = POLICY_NAMES.get(attr.policy, str(attr.policy))
    if name in RT_POLICIES:
        return f"{name}:{attr.priority}"
    return name


def parse_policy(value: str) -> tuple[int, int]:
    """Split ``"fifo:10"`` into ``(SCHED_FIFO, 10)``; ``"idle"`` into ``(SCHED_IDLE, 0)``."""
    name, _, prio = value.partition(":")
    if name not in POLICY_NUMBERS or name in ("deadline", "ext"):
        raise ValueError(f"unsupported scheduling policy {value!r}")
    priority = int(prio) if prio else 0
    if name in RT_POLICIES and not 1 <= priority <= 99:
        raise ValueError(f"real-time priority must be 1..99, got {value!r}")
    if name in FAIR_POLICIES and priority:
        raise ValueError(f"policy {name} takes no priority")
    return POLICY_NUMBERS[name], priority


def _read_proc_int(path: Path, tid: int) -> int:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise TaskGone(f"task {tid} exited") from exc


def read_autogroup(pid: int) -> tuple[str, int] | None:
    """Return ``(autogroup name, nice)`` from ``/proc/<pid>/autogroup``.

    ``None`` when the task is in the kernel's default autogroup (its session
    never called setsid, e.g. pid 1 and everything under a container init that
    does not): the file is empty and there is no autogroup nice to read or set.
    """
    try:
        text = (PROC / str(pid) / "autogroup").read_text().split()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise TaskGone(f"task {pid} exited") from exc
    if not text:
        return None
    # "/autogroup-10 nice 0"
    return text[0], int(text[2])


def read_knob(tid: int, knob: str) -> Any:
    """Read one knob's live value for ``tid`` (raises ``TaskGone``)."""
    if knob == "policy":
        return _policy_name(get_attr(tid))
    if knob == "nice":
        return get_attr(tid).nice
    if knob == "slice_ns":
        return get_attr(tid).runtime
    if knob == "affinity":
        try:
            return sorted(os.sched_getaffinity(tid))
        except ProcessLookupError as exc:
            raise TaskGone(f"task {tid} exited") from exc
    if knob == "timer_slack_ns":
        return _read_proc_int(PROC / str(tid) / "timerslack_ns", tid)
    if knob == "autogroup_nice":
        group = read_autogroup(tid)
        return None if group is None else group[1]
    raise ValueError(f"unknown task knob {knob!r}")


def write_knob(tid: int, knob: str, value: Any) -> None:
    """Write one knob for ``tid`` (raises ``TaskGone``, ``OSError``)."""
    if knob in ("policy", "nice", "slice_ns"):
        current = get_attr(tid)
        if knob == "policy":
            policy, priority = parse_policy(str(value))
            # A custom slice survives a change between fair policies only.
            runtime = _slice_arg(current) if POLICY_NAMES[policy] in FAIR_POLICIES else 0
            new = replace(current, policy=policy, priority=priority, runtime=runtime)
        elif knob == "nice":
            # setpriority, not sched_setattr: the kernel treats a setattr that
            # keeps SCHED_IDLE as "unchanged" and ignores the nice in it.
            try:
                os.setpriority(os.PRIO_PROCESS, tid, int(value))
            except ProcessLookupError as exc:
                raise TaskGone(f"task {tid} exited") from exc
            return
        else:
            ns = int(value)
            if ns != default_slice_ns() and not SLICE_MIN_NS <= ns <= SLICE_MAX_NS:
                raise ValueError(f"slice {ns} ns outside {SLICE_MIN_NS}..{SLICE_MAX_NS}")
            # The default value means "no custom slice" (0): see _slice_arg.
            runtime = 0 if ns == default_slice_ns() else ns
            if current.policy == SCHED_IDLE:
                # The kernel only sets the slice while entering a fair policy
                # other than IDLE; pass through SCHED_BATCH for one syscall.
                set_attr(tid, replace(current, policy=SCHED_BATCH, runtime=runtime))
            new = replace(current, runtime=runtime)
        set_attr(tid, new)
        return
    if knob == "affinity":
        try:
            os.sched_setaffinity(tid, [int(cpu) for cpu in value])
        except ProcessLookupError as exc:
            raise TaskGone(f"task {tid} exited") from exc
        return
    if knob == "timer_slack_ns":
        _write_proc(PROC / str(tid) / "timerslack_ns", str(int(value)), tid)
        return
    if knob == "autogroup_nice":
        if read_autogroup(tid) is None:
            if value is None:
                return  # restoring "no autogroup": nothing was ever written
            raise ValueError(
                f"task {tid} is in the default autogroup (its session never called setsid):"
                " autogroup_nice does not apply to it"
            )
        _write_proc(PROC / str(tid) / "autogroup", str(int(value)), tid)
        return
    raise ValueError(f"unknown task knob {knob!r}")


def _write_proc(path: Path, text: str, tid: int) -> None:
    try:
        path.write_text(text)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise TaskGone(f"task {tid} exited") from exc
