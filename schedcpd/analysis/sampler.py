"""The sampler: reads system and per-process counters at a fixed rate into a ring.

Each :class:`Sample` holds the *deltas* since the previous sample, so any
window of samples can be summed or spread into percentiles without keeping
raw counters around.  Per-process records exist only for processes that did
something in the interval (ran, waited, reaped children, spawned, sat in D
state); an absent record means "all zero".

Collection runs on one dedicated worker thread so the asyncio loop never
waits on /proc, and so the TaskStats socket (not thread safe) always sees the
same thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from schedcpd.analysis import procfs
from schedcpd.analysis.taskstats import TaskStatsReader, TgidStats

_LOGGER = logging.getLogger(__name__)

_TICK = 1.0 / procfs.CLOCK_TICKS


@dataclass(slots=True)
class ProcDelta:
    """What one process did during one sample interval (seconds and counts)."""

    pid: int
    comm: str
    ppid: int
    pgrp: int
    state: str
    threads: int
    cgroup: str | None
    cpu_s: float  # utime+stime of all threads
    child_cpu_s: float  # CPU of children reaped in the interval, minus those we saw live
    run_s: float  # on-CPU time (schedstat leader, or TaskStats sum of threads)
    wait_s: float  # run-queue wait (same source as run_s)
    slices: int  # times the leader thread got a CPU (schedstat)
    vcs: int | None  # voluntary switches, all threads (TaskStats only)
    ivcs: int | None  # involuntary switches, all threads (TaskStats only)
    io_bytes: int  # read+write bytes at the block layer since the last io reading
    spawned: int  # children first seen in this interval
    wait_source: str  # "taskstats" (all threads) or "schedstat" (leader thread)
    first_seen: float  # monotonic time the sampler first saw this process
    io_write_bytes: int = 0  # the write part of io_bytes
    blkio_s: float = 0.0  # block-I/O delay (taskstats delay accounting; 0 while it is off)


@dataclass(slots=True)
class Sample:
    """System figures for one interval ending at ``t`` (monotonic seconds)."""

    t: float
    dt: float
    wall: float
    cpu_util: list[float]  # per core, 0..1
    util: float  # all cores, 0..1
    iowait: float  # share of all cores' time in iowait, 0..1
    ctxt_rate: float  # context switches per second
    fork_rate: float  # forks per second
    procs_running: int
    procs_blocked: int
    load: tuple[float, float, float]
    psi: dict[str, tuple[float, float, float, float, float, float]]
    # per resource: some avg10, some avg60, full avg10, full avg60,
    # some stall fraction over the interval, full stall fraction over it
    rq_wait: float  # run-queue wait seconds per second (average tasks waiting)
    nprocs: int
    cost_s: float  # CPU time the collection itself took
    procs: dict[int, ProcDelta] = field(default_factory=dict)


@dataclass(slots=True)
class _ProcState:
    """Raw counters of one process from its last reading."""

    starttime: int
    ppid: int
    cpu_ticks: int
    child_ticks: int
    run_ns: int
    wait_ns: int
    slices: int
    first_seen: float
    threads: int = 1
    state: str = "S"
    cgroup: str | None = None
    cgroup_read: bool = False
    ts: TgidStats | None = None
    ts_index: int = -2
    io: int | None = None
    io_w: int | None = None
    blkio_ticks: int = 0


class Collector:
    """Stateful reader that turns two consecutive readings into a :class:`Sample`."""

    def __init__(self, taskstats_top: int = 32, use_taskstats: bool = True,
                 max_records: int = 64) -> None:
        self.taskstats_top = taskstats_top
        self.max_records = max_records
        # Replaced (never mutated) by the loop thread, read by the worker.
        self.watched: frozenset[int] = frozenset()
        self._use_taskstats = use_taskstats
        self._ts = TaskStatsReader()
        self._ts_opened = False
        self._index = 0
        self._prev_t: float | None = None
        self._prev_sys: procfs.SystemStat | None = None
        self._prev_psi: dict[str, procfs.Pressure | None] = {}
        self._procs: dict[int, _ProcState] = {}
        self._boot_offset = _boot_offset()
        self._fds = procfs.FdCache()

    @property
    def notes(self) -> list[str]:
        """Sources that are unavailable, as short human-readable notes."""
        out: list[str] = []
        if self._ts.note:
            out.append(self._ts.note)
        elif not self._use_taskstats:
            out.append("taskstats: disabled")
        if self._prev_psi and all(v is None for v in self._prev_psi.values()):
            out.append("psi: unavailable (kernel built without PSI or psi=0)")
        return out

    @property
    def taskstats_available(self) -> bool:
        """True while the TaskStats socket is open and answering."""
        return self._ts.available

    def close(self) -> None:
        """Release the TaskStats socket and cached /proc fds; a later collect re-primes."""
        self._ts.close()
        self._ts_opened = False
        self._fds.close()
        self._prev_t = None
        self._prev_sys = None
        self._procs = {}

    def collect(self) -> Sample | None:
        """Read everything once; the first call only primes and returns None."""
        cpu0 = time.thread_time()
        if self._use_taskstats and not self._ts_opened:
            self._ts_opened = True
            self._ts.open()
        t = time.monotonic()
        wall = time.time()
        sys_stat = procfs.read_system_stat()
        load = procfs.read_loadavg()
        psi = {r: procfs.read_pressure(r) for r in procfs.PSI_RESOURCES}
        prev_t, prev_sys, prev_psi = self._prev_t, self._prev_sys, self._prev_psi
        self._prev_t, self._prev_sys, self._prev_psi = t, sys_stat, psi
        procs, wait_total = self._collect_procs(t, prev_t)
        self._index += 1
        if prev_t is None or prev_sys is None:
            return None
        dt = t - prev_t
        cpu_util: list[float] = []
        busy_sum = total_sum = 0
        for (busy, total), (pbusy, ptotal) in zip(sys_stat.cpus, prev_sys.cpus, strict=False):
            db, dtot = busy - pbusy, total - ptotal
            busy_sum += db
            total_sum += dtot
            cpu_util.append(round(db / dtot, 4) if dtot > 0 else 0.0)
        iowait = sum(sys_stat.iowait) - sum(prev_sys.iowait)
        psi_out: dict[str, tuple[float, float, float, float, float, float]] = {}
        for res, p in psi.items():
            pp = prev_psi.get(res)
            if p is None:
                continue
            some = (p.some_total - pp.some_total) / 1e6 / dt if pp else 0.0
            full = (p.full_total - pp.full_total) / 1e6 / dt if pp else 0.0
            psi_out[res] = (p.some10, p.some60, p.full10, p.full60,
                            max(0.0, some), max(0.0, full))
        return Sample(
            t=t,
            dt=dt,
            wall=wall,
            cpu_util=cpu_util,
            util=busy_sum / total_sum if total_sum > 0 else 0.0,
            iowait=iowait / total_sum if total_sum > 0 else 0.0,
            ctxt_rate=(sys_stat.ctxt - prev_sys.ctxt) / dt,
            fork_rate=(sys_stat.forks - prev_sys.forks) / dt,
            procs_running=sys_stat.procs_running,
            procs_blocked=sys_stat.procs_blocked,
            load=load,
            psi=psi_out,
            rq_wait=wait_total / dt,
            nprocs=len(self._procs),
            cost_s=time.thread_time() - cpu0,
            procs=procs,
        )

    def _collect_procs(self, t: float,
                       prev_t: float | None) -> tuple[dict[int, ProcDelta], float]:
        """Read every process; return the busiest records and everyone's wait sum."""
        old = self._procs
        new: dict[int, _ProcState] = {}
        rows: list[tuple[int, procfs.PidStat, _ProcState, _ProcState | None, bool]] = []
        for pid in procfs.list_pids():
            prev = old.get(pid)
            ss = procfs.read_schedstat(pid, self._fds)
            if ss is None:
                continue
            if (prev is not None and prev.threads == 1 and prev.state != "D"
                    and ss[0] == prev.run_ns and ss[1] == prev.wait_ns):
                # A single thread that has not run since: nothing in its stat
                # can have changed (reaping children takes CPU), so skip it.
                # Most kernel threads take this path.
                new[pid] = prev
                continue
            st = procfs.read_pid_stat(pid, self._fds)
            if st is None:
                continue
            if prev is not None and prev.starttime != st.starttime:
                prev = None  # pid reused by a new process
            # Started after the previous sample: all its counters are new work.
            born = prev_t is not None and prev is None and (
                st.starttime * _TICK - self._boot_offset > prev_t - 2 * _TICK
            )
            state = _ProcState(
                starttime=st.starttime, ppid=st.ppid, cpu_ticks=st.utime + st.stime,
                child_ticks=st.cutime + st.cstime, run_ns=ss[0], wait_ns=ss[1],
                slices=ss[2], first_seen=prev.first_seen if prev else t,
                threads=st.threads, state=st.state, blkio_ticks=st.blkio_ticks,
            )
            if prev is not None:
                state.cgroup, state.cgroup_read = prev.cgroup, prev.cgroup_read
                state.ts, state.ts_index, state.io = prev.ts, prev.ts_index, prev.io
                state.io_w = prev.io_w
            new[pid] = state
            rows.append((pid, st, state, prev, born))
        self._procs = new
        self._fds.retain(set(new))
        if prev_t is None:
            return {}, 0.0

        # A child we saw alive and that is gone now was (most likely) reaped by
        # its parent, whose cutime/cstime then jumps by the child's whole life.
        # That CPU was already counted on the child, so credit it back.
        credit: dict[int, int] = collections.defaultdict(int)
        for pid, ostate in old.items():
            nstate = new.get(pid)
            if nstate is None or nstate.starttime != ostate.starttime:
                credit[ostate.ppid] += ostate.cpu_ticks + ostate.child_ticks
        spawned: dict[int, int] = collections.defaultdict(int)
        for _pid, st, _state, _prev, born in rows:
            if born:
                spawned[st.ppid] += 1

        deltas: list[tuple[float, int, procfs.PidStat, _ProcState, _ProcState, bool]] = []
        for pid, st, state, prev, born in rows:
            if prev is None and not born:
                continue  # first sight of an older process: baseline only
            base = prev if prev is not None else _ZERO
            cpu = state.cpu_ticks - base.cpu_ticks
            wait = state.wait_ns - base.wait_ns
            deltas.append((cpu * _TICK + wait / 1e9, pid, st, state, base, born))

        # TaskStats for the busiest processes only, to bound the cost on big hosts.
        busiest = sorted((d for d in deltas if d[0] > 0), key=lambda d: d[0], reverse=True)
        watched = self.watched
        ts_pids = {d[1] for d in busiest[: self.taskstats_top]} | watched

        out: dict[int, ProcDelta] = {}
        for _score, pid, st, state, base, born in deltas:
            cpu_ticks = state.cpu_ticks - base.cpu_ticks
            child = max(0, state.child_ticks - base.child_ticks - credit.get(pid, 0))
            run_ns = state.run_ns - base.run_ns
            wait_ns = state.wait_ns - base.wait_ns
            slices = state.slices - base.slices
            vcs = ivcs = None
            source = "schedstat"
            if pid in ts_pids and self._ts.available:
                ts = self._ts.tgid(pid)
                if ts is not None:
                    if state.ts is not None and state.ts_index == self._index - 1:
                        run_ns = ts.cpu_run_ns - state.ts.cpu_run_ns
                        wait_ns = ts.cpu_delay_ns - state.ts.cpu_delay_ns
                        vcs = ts.nvcsw - state.ts.nvcsw
                        ivcs = ts.nivcsw - state.ts.nivcsw
                        source = "taskstats"
                    state.ts, state.ts_index = ts, self._index
            active = (cpu_ticks > 0 or child > 0 or run_ns > 0 or wait_ns > 0
                      or st.state == "D" or spawned.get(pid, 0) > 0 or born)
            if not active:
                continue
            io_bytes = io_write = 0
            # /proc/<pid>/io only for the busiest and the blocked: it is read
            # with a fresh open each time and matters only for classifying.
            io = procfs.read_pid_io(pid) if pid in ts_pids or st.state == "D" else None
            if io is not None:
                total_io = io[0] + io[1]
                if state.io is not None:
                    io_bytes = max(0, total_io - state.io)
                    io_write = max(0, io[1] - (state.io_w or 0))
                elif born:
                    io_bytes, io_write = total_io, io[1]
                state.io, state.io_w = total_io, io[1]
            if not state.cgroup_read and pid in ts_pids:
                # Only the busiest: on a host that forks hundreds of processes
                # a second, reading every newcomer's cgroup dominated the cost.
                state.cgroup = procfs.read_pid_cgroup(pid)
                state.cgroup_read = True
            out[pid] = ProcDelta(
                pid=pid, comm=st.comm, ppid=st.ppid, pgrp=st.pgrp, state=st.state,
                threads=st.threads, cgroup=state.cgroup,
                cpu_s=cpu_ticks * _TICK, child_cpu_s=child * _TICK,
                run_s=max(0, run_ns) / 1e9, wait_s=max(0, wait_ns) / 1e9,
                slices=max(0, slices), vcs=vcs, ivcs=ivcs, io_bytes=io_bytes,
                spawned=spawned.get(pid, 0), wait_source=source,
                first_seen=state.first_seen, io_write_bytes=min(io_write, io_bytes),
                blkio_s=max(0, state.blkio_ticks - base.blkio_ticks) * _TICK,
            )
        wait_total = sum(d.wait_s for d in out.values())
        if len(out) > self.max_records:
            # Bound the ring's memory when hundreds of processes are busy
            # (measured ~0.8 KB per record): keep the ones that matter most.
            def weight(d: ProcDelta) -> float:
                return (d.cpu_s + d.child_cpu_s + d.wait_s
                        + 0.001 * (d.spawned + (d.state == "D") + (d.io_bytes > 0)))
            keep = sorted(out.values(), key=weight, reverse=True)[: self.max_records]
            kept = {d.pid: d for d in keep}
            # Watched processes (a deployment's targets) are always kept.
            kept.update((pid, out[pid]) for pid in watched if pid in out)
            out = kept
        return out, wait_total


_ZERO = _ProcState(starttime=0, ppid=0, cpu_ticks=0, child_ticks=0, run_ns=0, wait_ns=0,
                   slices=0, first_seen=0.0)


def _boot_offset() -> float:
    """CLOCK_BOOTTIME minus CLOCK_MONOTONIC: process start times count from boot."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    except (AttributeError, OSError):
        return 0.0


class Sampler:
    """Runs a :class:`Collector` at ``rate_hz`` on the running loop; keeps a ring."""

    def __init__(self, rate_hz: float = 1.0, history_s: float = 300.0,
                 taskstats_top: int = 32, use_taskstats: bool = True,
                 on_sample: Callable[[Sample], None] | None = None,
                 max_records: int = 64) -> None:
        if not math.isfinite(rate_hz) or not 0.01 <= rate_hz <= 100:
            raise ValueError(f"rate_hz must be within 0.01..100, got {rate_hz}")
        self.rate_hz = rate_hz
        self.history_s = history_s
        self.collector = Collector(taskstats_top=taskstats_top, use_taskstats=use_taskstats,
                                   max_records=max_records)
        self._on_sample = on_sample
        self._ring: collections.deque[Sample] = collections.deque(
            maxlen=int(history_s * rate_hz) + 2
        )
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.errors = 0

    @property
    def running(self) -> bool:
        """True while the sampling task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def samples(self) -> list[Sample]:
        """All samples in the ring, oldest first (a copy)."""
        return list(self._ring)

    def window(self, start: float, end: float) -> list[Sample]:
        """Samples whose interval ends within [start, end] (monotonic seconds)."""
        return [s for s in self._ring if start <= s.t <= end]

    def last(self) -> Sample | None:
        """The newest sample, if any."""
        return self._ring[-1] if self._ring else None

    async def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self.running:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="schedcp-sampler"
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="schedcp-sampler")

    async def stop(self) -> None:
        """Stop sampling and release the worker thread and netlink socket."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self.collector.close)
            executor.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        next_t = loop.time()
        while True:
            try:
                sample = await loop.run_in_executor(self._executor, self.collector.collect)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad read must not end observation; the log keeps it.
                self.errors += 1
                _LOGGER.exception("sampling failed")
                sample = None
            if sample is not None:
                self._trim(sample.t)
                self._ring.append(sample)
                if self._on_sample is not None:
                    try:
                        self._on_sample(sample)
                    except Exception:
                        _LOGGER.exception("sample callback failed")
            next_t += period
            now = loop.time()
            if next_t < now:  # fell behind (suspended host, slow /proc): skip ticks
                next_t = now + period
            await asyncio.sleep(next_t - now)

    def _trim(self, now: float) -> None:
        while self._ring and self._ring[0].t < now - self.history_s:
            self._ring.popleft()
