"""Readers of /proc and TaskStats against real processes."""

from __future__ import annotations

import os
import time

from schedcpd.analysis import procfs
from schedcpd.analysis.taskstats import TaskStatsReader
from tests.analysis.conftest import as_nobody


def test_parse_pid_stat_handles_odd_comm() -> None:
    # comm may contain spaces and ")"; parsing must anchor on the last ")".
    line = (b"4242 (a b) (c) R 1 4242 4242 0 -1 4194560 10 0 0 0 "
            b"7 3 5 2 20 0 4 0 123456 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 "
            b"0 0 0 17 1 0 0 9 0 0 0 0 0 0 0 0 0 0\n")
    st = procfs.parse_pid_stat(line)
    assert st.comm == "a b) (c"
    assert (st.state, st.ppid, st.pgrp) == ("R", 1, 4242)
    assert (st.utime, st.stime, st.cutime, st.cstime) == (7, 3, 5, 2)
    assert st.threads == 4 and st.starttime == 123456
    assert st.processor == 1 and st.blkio_ticks == 9


def test_real_stat_of_self() -> None:
    st = procfs.read_pid_stat(os.getpid())
    assert st is not None
    assert st.ppid == os.getppid()
    assert st.pgrp == os.getpgrp()
    assert st.utime + st.stime > 0
    sched = procfs.read_schedstat(os.getpid())
    assert sched is not None and sched[0] > 0 and sched[2] > 0
    assert procfs.read_pid_stat(2**22 + 7) is None  # above pid_max: never exists


def test_system_stat_counts_cores_and_switches() -> None:
    a = procfs.read_system_stat()
    time.sleep(0.1)
    b = procfs.read_system_stat()
    assert len(a.cpus) == os.cpu_count()
    assert b.ctxt > a.ctxt
    assert all(total >= busy >= 0 for busy, total in b.cpus)
    load = procfs.read_loadavg()
    assert len(load) == 3 and all(x >= 0 for x in load)


def test_pressure_files() -> None:
    for res in procfs.PSI_RESOURCES:
        p = procfs.read_pressure(res)
        assert p is not None, f"/proc/pressure/{res} missing"
        assert 0.0 <= p.some10 <= 100.0 and p.some_total >= p.full_total >= 0


def test_cgroup_of_process_in_created_cgroup(cpu_cgroup, spawn) -> None:
    path = cpu_cgroup("leaf")
    p = spawn("sleep", "30")
    (procfs.cgroup_cpu_dir(path) / "cgroup.procs").write_text(str(p.pid))  # type: ignore[operator]
    assert procfs.read_pid_cgroup(p.pid) == path
    figures = procfs.read_cgroup_cpu(path)
    assert figures is not None and figures["shares"] == 1024
    assert "nr_throttled" in figures


def test_taskstats_matches_pyroute2_decoder(spawn) -> None:
    from pyroute2 import TaskStats

    p = spawn("sleep", "30")  # asleep: its counters do not move between the reads
    time.sleep(0.2)
    ours = TaskStatsReader()
    assert ours.open(), ours.note
    try:
        mine = ours.tgid(p.pid)
    finally:
        ours.close()
    ts = TaskStats()
    ts.bind()
    try:
        ref = ts.get_pid_stat(p.pid)[0].get_attr("TASKSTATS_TYPE_AGGR_PID").get_attr(
            "TASKSTATS_TYPE_STATS")
    finally:
        ts.close()
    assert mine is not None
    # a single-threaded process: the TGID sum equals the PID figures
    assert mine.nvcsw == ref["nvcsw"] and mine.nivcsw == ref["nivcsw"]
    assert mine.cpu_delay_ns == ref["cpu_delay_total"]
    assert mine.cpu_run_ns == ref["cpu_run_real_total"]
    assert mine.blkio_delay_ns == ref["blkio_delay_total"]


def test_taskstats_gone_process_is_none() -> None:
    r = TaskStatsReader()
    assert r.open(), r.note
    try:
        assert r.tgid(2**22 + 7) is None
        assert r.tgid(os.getpid()) is not None  # the socket still works after an error
    finally:
        r.close()


def test_taskstats_says_unavailable_when_not_root() -> None:
    # A forked child drops to nobody; the kernel itself refuses the query.
    def query() -> bytes:
        r = TaskStatsReader()
        return f"{r.open()} {r.note}".encode()

    out = as_nobody(query).decode()
    assert out == "False taskstats: unavailable (not root)"
