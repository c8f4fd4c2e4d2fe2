"""Readers for the kernel's text interfaces: /proc and cgroup files.

Every reader returns plain numbers or small dataclasses and never raises for
a process that vanished between listing and reading (``None`` instead): on a
busy host processes exit all the time.  Readers use ``os.open``/``os.read``
rather than ``open()`` because one sample reads two files per process and the
buffered file objects cost about twice as much.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

PROC = "/proc"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PSI_RESOURCES = ("cpu", "io", "memory")


def _read(path: str, size: int = 4096) -> bytes | None:
    """Return up to ``size`` bytes of ``path``, or None when it is gone or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(slots=True)
class SystemStat:
    """Counters from /proc/stat; times are in clock ticks."""

    cpus: list[tuple[int, int]]  # per core: (busy ticks, total ticks)
    ctxt: int
    forks: int
    procs_running: int
    procs_blocked: int
    iowait: list[int]  # per core iowait ticks


def read_system_stat() -> SystemStat:
    """Parse /proc/stat (per-core busy/total ticks, context switches, forks)."""
    data = _read(f"{PROC}/stat", 65536) or b""
    cpus: list[tuple[int, int]] = []
    iowait: list[int] = []
    ctxt = forks = running = blocked = 0
    for line in data.split(b"\n"):
        if line.startswith(b"cpu") and line[3:4].isdigit():
            f = [int(x) for x in line.split()[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice;
            # guest time is already counted in user/nice, so it is not summed.
            total = sum(f[:8])
            idle = f[3] + f[4]
            cpus.append((total - idle, total))
            iowait.append(f[4])
        elif line.startswith(b"ctxt "):
            ctxt = int(line[5:])
        elif line.startswith(b"processes "):
            forks = int(line[10:])
        elif line.startswith(b"procs_running "):
            running = int(line[14:])
        elif line.startswith(b"procs_blocked "):
            blocked = int(line[14:])
    return SystemStat(cpus, ctxt, forks, running, blocked, iowait)


def read_loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    data = (_read(f"{PROC}/loadavg") or b"0 0 0").split()
    return float(data[0]), float(data[1]), float(data[2])


@dataclass(slots=True)
class Pressure:
    """One /proc/pressure/<resource> file; ``*_total`` are microseconds."""

    some10: float
    some60: float
    some_total: int
    full10: float
    full60: float
    full_total: int


def read_pressure(resource: str) -> Pressure | None:
    """Parse /proc/pressure/<resource>; None when PSI is disabled."""
    data = _read(f"{PROC}/pressure/{resource}")
    if not data:
        return None
    vals: dict[bytes, tuple[float, float, int]] = {}
    for line in data.split(b"\n"):
        parts = line.split()
        if len(parts) < 5:
            continue
        kv = dict(p.split(b"=", 1) for p in parts[1:])
        vals[parts[0]] = (float(kv[b"avg10"]), float(kv[b"avg60"]), int(kv[b"total"]))
    some = vals.get(b"some", (0.0, 0.0, 0))
    # cpu "full" exists since 5.13; older kernels lack the line.
    full = vals.get(b"full", (0.0, 0.0, 0))
    return Pressure(some[0], some[1], some[2], full[0], full[1], full[2])


def list_pids() -> list[int]:
    """All process ids (thread-group leaders) now in /proc."""
    return [int(n) for n in os.listdir(PROC) if n.isdigit()]


@dataclass(slots=True)
class PidStat:
    """Fields of /proc/<pid>/stat; times are clock ticks, summed over threads."""

    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    threads: int
    starttime: int
    processor: int
    blkio_ticks: int


def parse_pid_stat(data: bytes) -> PidStat:
    """Parse the text of /proc/<pid>/stat (comm may hold spaces and parentheses)."""
    lpar = data.index(b"(")
    rpar = data.rindex(b")")
    comm = data[lpar + 1 : rpar].decode("utf-8", "replace")
    f = data[rpar + 2 :].split()
    # f[0] is field 3 (state) of proc(5); index = field number - 3.
    return PidStat(
        comm=comm,
        state=f[0].decode(),
        ppid=int(f[1]),
        pgrp=int(f[2]),
        session=int(f[3]),
        utime=int(f[11]),
        stime=int(f[12]),
        cutime=int(f[13]),
        cstime=int(f[14]),
        threads=int(f[17]),
        starttime=int(f[19]),
        processor=int(f[36]) if len(f) > 36 else -1,
        blkio_ticks=int(f[39]) if len(f) > 39 else 0,
    )


class FdCache:
    """Keeps /proc/<pid>/<file> open and re-reads it with pread.

    Path lookup in /proc costs more than generating the text: re-reading an
    open fd is 2-3x cheaper than open/read/close.  An fd keeps pointing at
    the process it was opened for; once that exits, reads fail (ESRCH) and
    the fd is dropped, so a reused pid is never misread.  At most
    ``max_fds`` stay open (default: a quarter of RLIMIT_NOFILE, <= 8192);
    beyond that files are opened per read.
    """

    def __init__(self, max_fds: int | None = None) -> None:
        if max_fds is None:
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = soft if soft != resource.RLIM_INFINITY else 65536
            max_fds = max(0, min(8192, limit // 4))
        self.max_fds = max_fds
        self._fds: dict[tuple[int, str], int] = {}

    def __len__(self) -> int:
        return len(self._fds)

    def read(self, pid: int, name: str, size: int) -> bytes | None:
        """Contents of /proc/<pid>/<name>, or None when the process is gone."""
        key = (pid, name)
        fd = self._fds.get(key)
        if fd is not None:
            try:
                data = os.pread(fd, size, 0)
            except OSError:
                data = b""
            if data:
                return data
            self._drop(key)
            return None
        if len(self._fds) >= self.max_fds:
            return _read(f"{PROC}/{pid}/{name}", size)
        try:
            fd = os.open(f"{PROC}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, size)
        except OSError:
            data = b""
        if not data:
            os.close(fd)
            return None
        self._fds[key] = fd
        return data

    def _drop(self, key: tuple[int, str]) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def forget(self, pid: int) -> None:
        """Close the fds of a process that is gone."""
        for name in ("stat", "schedstat"):
            self._drop((pid, name))

    def retain(self, pids: set[int]) -> None:
        """Close the fds of every process not in ``pids``."""
        for key in [k for k in self._fds if k[0] not in pids]:
            self._drop(key)

    def close(self) -> None:
        """Close every fd."""
        for key in list(self._fds):
            self._drop(key)


def read_pid_stat(pid: int, cache: FdCache | None = None) -> PidStat | None:
    """/proc/<pid>/stat, or None if the process is gone."""
    data = cache.read(pid, "stat", 2048) if cache is not None else _read(f"{PROC}/{pid}/stat", 2048)
    if not data:
        return None
    try:
        return parse_pid_stat(data)
    except (ValueError, IndexError):
        return None


def task_start_time(tid: int) -> int | None:
    """Start time (clock ticks) of task ``tid``, ``None`` when it is gone."""
    stat = read_pid_stat(tid)
    return stat.starttime if stat else None


def thread_ids(pid: int) -> list[int]:
    """Thread ids of process ``pid``, sorted (empty when it is gone)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def process_tree(comm: Iterable[str], pids: Iterable[int]) -> list[int]:
    """Processes named one of ``comm`` or listed in ``pids``, and all their descendants, sorted."""
    names = set(comm)
    roots = {p for p in pids if os.path.exists(f"{PROC}/{p}")}
    children: dict[int, list[int]] = {}
    for pid in list_pids():
        stat = read_pid_stat(pid)
        if stat is None:
            continue
        children.setdefault(stat.ppid, []).append(pid)
        if stat.comm in names:
            roots.add(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return sorted(out)


def read_schedstat(pid: int, cache: FdCache | None = None) -> tuple[int, int, int] | None:
    """(on-CPU ns, run-queue wait ns, timeslices) of the process's leader thread."""
    data = (cache.read(pid, "schedstat", 256) if cache is not None
            else _read(f"{PROC}/{pid}/schedstat", 256))
    if not data:
        return None
    f = data.split()
    if len(f) < 3:
        return None
    return int(f[0]), int(f[1]), int(f[2])


def read_pid_io(pid: int) -> tuple[int, int] | None:
    """(read_bytes, write_bytes) reaching the block layer, summed over threads."""
    data = _read(f"{PROC}/{pid}/io", 1024)
    if not data:
        return None
    f = data.split()
    # Fixed order since 2.6.20: rchar wchar syscr syscw read_bytes write_bytes ...
    if len(f) >= 12 and f[8] == b"read_bytes:" and f[10] == b"write_bytes:":
        return int(f[9]), int(f[11])
    kv = dict(zip(f[::2], f[1::2], strict=False))
    return int(kv.get(b"read_bytes:", 0)), int(kv.get(b"write_bytes:", 0))


def read_pid_cgroup(pid: int) -> str | None:
    """The process's cgroup path in the hierarchy holding the cpu controller.

    On cgroup v1 that is the ``cpu`` (or ``cpu,cpuacct``) line; on a pure v2
    host the ``0::`` line.  Scheduling knobs act on this hierarchy, so it is
    the one worth reporting.
    """
    data = _read(f"{PROC}/{pid}/cgroup", 8192)
    if not data:
        return None
    unified: str | None = None
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            unified = parts[2]
        elif "cpu" in parts[1].split(","):
            return parts[2]
    return unified


def cgroup_cpu_dir(path: str) -> Path | None:
    """Directory of a cgroup (path as in /proc/<pid>/cgroup) in the cpu hierarchy."""
    if not path.startswith("/") or ".." in path.split("/"):
        return None
    rel = path.lstrip("/")
    for mount in _cpu_mounts():
        candidate = Path(mount) / rel
        if candidate.is_dir():
            return candidate
    return None


def _cpu_mounts() -> list[str]:
    """Mount points of the cgroup v1 cpu controller, then of cgroup2."""
    v1: list[str] = []
    v2: list[str] = []
    data = _read(f"{PROC}/self/mountinfo", 1 << 20) or b""
    for line in data.decode("utf-8", "replace").splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] == "cgroup" and "cpu" in rfields[2].split(","):
            v1.append(fields[4])
        elif rfields[0] == "cgroup2":
            v2.append(fields[4])
    return v1 + v2


def read_cgroup_cpu(path: str) -> dict[str, float | int | str] | None:
    """Instant figures of a cgroup in the cpu hierarchy: weight, quota, throttling.

    Keys present depend on the cgroup version: v1 gives ``shares``,
    ``quota_us``/``period_us``, ``idle``; v2 gives ``weight``, ``max``.  Both
    give ``nr_periods``, ``nr_throttled``, ``throttled_s``.
    """
    d = cgroup_cpu_dir(path)
    if d is None:
        return None
    out: dict[str, float | int | str] = {}

    def text(name: str) -> str | None:
        raw = _read(str(d / name), 4096)
        return raw.decode().strip() if raw else None

    for name, key in (("cpu.shares", "shares"), ("cpu.cfs_quota_us", "quota_us"),
                      ("cpu.cfs_period_us", "period_us"), ("cpu.idle", "idle"),
                      ("cpu.weight", "weight")):
        v = text(name)
        if v is not None and v.lstrip("-").isdigit():
            out[key] = int(v)
    v = text("cpu.max")
    if v is not None:
        out["max"] = v
    stat = text("cpu.stat")
    if stat:
        for line in stat.splitlines():
            k, _, val = line.partition(" ")
            if k in ("nr_periods", "nr_throttled"):
                out[k] = int(val)
            elif k == "throttled_time":  # v1, ns
                out["throttled_s"] = int(val) / 1e9
            elif k == "throttled_usec":  # v2
                out["throttled_s"] = int(val) / 1e6
    return out
