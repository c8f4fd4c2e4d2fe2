"""Tier-1 summaries: size bound, progressive detail, notes, gauges."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client import CollectorRegistry

from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.analysis.sampler import Collector
from schedcpd.analysis.summary import BRIEF_LIMIT
from schedcpd.errors import InvalidArgument

LONG = "a-rather-long-cgroup-name-for-tests/and-a-deeper-child-with-a-long-name"


async def test_brief_fits_1k_with_many_busy_processes(spawn, argv, cpu_cgroup) -> None:
    cg = cpu_cgroup(LONG)
    from schedcpd.analysis import procfs
    procs_file = procfs.cgroup_cpu_dir(cg)
    assert procs_file is not None
    # 40 busy processes with 15-character names, some in a deep cgroup, so
    # that the uncut top list would be well over 1 KB
    # A few of them go into a deep cgroup with a large weight, so they stay
    # visibly busy even when other tenants load the host.
    for d in (procs_file, procs_file.parent, procs_file.parent.parent):
        (d / "cpu.shares").write_text("8192")
    moved: set[int] = set()
    for i in range(40):
        p = spawn(*argv.workload("named", f"schedcp-tst-{i:03d}"))
        if i % 10 == 0:
            (procs_file / "cgroup.procs").write_text(str(p.pid))
            moved.add(p.pid)
    registry = CollectorRegistry()
    # top_n covers every busy process, even on a host crowded by other tenants
    analyzer = WorkloadAnalyzer(rate_hz=4, window_s=10, top_n=2000, registry=registry,
                                max_records=1000)
    await analyzer.start()
    try:
        await asyncio.sleep(3)
        brief = analyzer.summary("brief")
        normal = analyzer.summary("normal")
        full = analyzer.summary("full")
        brief_async = await analyzer.summary_async("brief")
    finally:
        await analyzer.stop()

    assert len(json.dumps(brief_async).encode()) <= BRIEF_LIMIT
    assert brief_async["v"] == 1 and brief_async["n"] >= brief["n"]
    text = json.dumps(brief)
    assert len(text.encode()) <= BRIEF_LIMIT, text
    assert json.loads(text) == brief
    assert brief["n"] >= 4  # 12 planned; fewer when the host is crowded
    assert len(brief["cpu"]) == len(normal["cpu"])
    for key in ("cpu", "util", "load", "psi", "rqwait", "cs", "forks", "top", "notes"):
        assert key in brief
    assert set(brief["psi"]) == {"cpu", "io", "memory"}
    assert set(brief["psi"]["io"]) == {"some", "full"}
    assert 1 <= len(brief["top"]) <= 5
    for e in brief["top"]:
        assert {"pid", "comm", "cls", "cpu", "thr", "root", "cg"} <= set(e)

    # wider levels keep every brief key and add more
    assert set(brief) - {"notes"} <= set(normal) <= set(full)
    assert len(normal["top"]) > len(brief["top"])
    assert len(full["top"]) == len(normal["top"])
    ours = [e for e in normal["top"] if e["comm"].startswith("schedcp-tst-")]
    assert len(ours) >= 5
    for e in ours:
        assert (e["cg"] == cg) == (e["pid"] in moved), e
    assert any(e["pid"] in moved for e in ours)
    cgroups = {g["cg"]: g for g in normal["cgroups"]}
    assert cg in cgroups and cgroups[cg]["procs"] >= 1
    assert cgroups[cg]["settings"]["shares"] == 8192
    assert "schedstat" in full["top"][0] and "series" in full and "sampler" in full
    assert full["sampler"]["cost_ms_mean"] > 0

    # gauges carry the same figures
    samples = registry.get_sample_value("schedcp_analysis_samples_total")
    assert samples is not None and samples >= brief["n"]
    assert registry.get_sample_value("schedcp_cpu_utilization_ratio", {"cpu": "0"}) is not None
    assert registry.get_sample_value(
        "schedcp_pressure_avg_ratio", {"resource": "cpu", "kind": "some", "window": "10s"}
    ) is not None
    assert (registry.get_sample_value("schedcp_context_switches_per_second") or 0) > 0


def test_unknown_detail_is_invalid_argument() -> None:
    analyzer = WorkloadAnalyzer()
    with pytest.raises(InvalidArgument):
        analyzer.summary("verbose")


def test_summary_before_start_says_so() -> None:
    s = WorkloadAnalyzer().summary("brief")
    assert s["n"] == 0 and "no samples yet" in s["notes"]


def test_bad_constructor_arguments() -> None:
    for kwargs in ({"rate_hz": 0.0}, {"rate_hz": float("nan")}, {"window_s": -1.0},
                   {"top_n": 0}):
        with pytest.raises(InvalidArgument):
            WorkloadAnalyzer(**kwargs)


def test_records_per_sample_are_capped(spawn, argv) -> None:
    for i in range(12):
        spawn(*argv.workload("named", f"schedcp-cap-{i:02d}"))
    collector = Collector(max_records=3)
    try:
        collector.collect()
        time.sleep(0.5)
        sample = collector.collect()
    finally:
        collector.close()
    assert sample is not None
    assert len(sample.procs) == 3
    # the system figure still sums every process, not only the kept records
    assert sample.rq_wait * sample.dt >= sum(d.wait_s for d in sample.procs.values())


def test_watched_processes_are_always_recorded(spawn, argv) -> None:
    named = [spawn(*argv.workload("named", f"schedcp-w-{i:02d}")) for i in range(8)]
    spawn(*argv.hog())
    analyzer = WorkloadAnalyzer(max_records=1)
    analyzer.watch([named[0].pid])
    collector = analyzer.sampler.collector
    try:
        collector.collect()
        time.sleep(0.5)
        sample = collector.collect()
    finally:
        collector.close()
    assert sample is not None
    assert named[0].pid in sample.procs  # watched, though far from the busiest
    assert sample.procs[named[0].pid].wait_source in ("schedstat", "taskstats")
    assert len(sample.procs) <= 2  # the single busiest (likely the hog) + the watched one
    analyzer.unwatch()
    assert collector.watched == frozenset()
    with pytest.raises(InvalidArgument):
        analyzer.watch([0])


async def test_restart_after_stop() -> None:
    analyzer = WorkloadAnalyzer(rate_hz=10)
    for _ in range(2):
        await analyzer.start()
        assert analyzer.running
        await asyncio.sleep(1.0)
        assert analyzer.sampler.collector.taskstats_available
        await analyzer.stop()
        assert not analyzer.running
        assert not analyzer.sampler.collector.taskstats_available
        await asyncio.sleep(2.0)
    samples = analyzer.sampler.samples
    assert len(samples) >= 2
    # no sample spans the 2 s stopped gap
    assert max(s.dt for s in samples) < 1.8


def test_brief_bound_holds_for_big_hosts() -> None:
    # A 64-core host with 300 busy processes with long non-ASCII names and
    # deep cgroups: built from synthetic samples (this VM has 2 cores).
    from schedcpd.analysis import summary as summary_mod
    from schedcpd.analysis.sampler import ProcDelta, Sample

    samples = []
    for k in range(60):
        procs = {
            pid: ProcDelta(
                pid=pid, comm="ünïcödé-wörkér"[:15], ppid=1, pgrp=pid, state="R", threads=64,
                cgroup="/" + "/".join(["very-long-cgroup-component"] * 8), cpu_s=0.5,
                child_cpu_s=0.0, run_s=0.5, wait_s=0.2, slices=100, vcs=10, ivcs=90,
                io_bytes=0, spawned=0, wait_source="taskstats", first_seen=0.0)
            for pid in range(1000, 1300)
        }
        samples.append(Sample(
            t=float(k + 1), dt=1.0, wall=0.0, cpu_util=[0.5] * 64, util=0.5, iowait=0.0,
            ctxt_rate=1e6, fork_rate=1e3, procs_running=300, procs_blocked=3,
            load=(300.0, 300.0, 300.0),
            psi={r: (99.99, 99.99, 99.99, 99.99, 1.0, 1.0) for r in ("cpu", "io", "memory")},
            rq_wait=60.0, nprocs=5000, cost_s=0.01, procs=procs))
    notes = ["taskstats: unavailable (not root)", "psi: unavailable (kernel built without PSI)"]
    brief = summary_mod.build(samples, "brief", 8, notes, 1.0)
    assert len(json.dumps(brief).encode()) <= BRIEF_LIMIT
    assert isinstance(brief["cpu"], dict) and brief["cpu"]["n"] == 64
    assert 1 <= len(brief["top"]) <= 5
    assert all(e["cls"] == "cpu-bound" for e in brief["top"])
    assert all(len(e["cg"]) <= 40 for e in brief["top"])


def test_a_reader_waiting_on_the_disk_is_in_io_top_with_its_write_split() -> None:
    # Eight CPU hogs fill `top`; a reader in D with almost no CPU and a writer
    # must still be listed (io_top), with reads and writes told apart.
    from schedcpd.analysis import summary as summary_mod
    from schedcpd.analysis.sampler import ProcDelta, Sample

    def delta(pid: int, cpu: float, state: str, io: int, written: int,
              blkio: float) -> ProcDelta:
        return ProcDelta(pid=pid, comm=f"p{pid}", ppid=1, pgrp=pid, state=state, threads=1,
                         cgroup="/", cpu_s=cpu, child_cpu_s=0.0, run_s=cpu, wait_s=0.0,
                         slices=10, vcs=10, ivcs=0, io_bytes=io, spawned=0,
                         wait_source="schedstat", first_seen=0.0, io_write_bytes=written,
                         blkio_s=blkio)

    samples = []
    for k in range(8):
        procs = {pid: delta(pid, 0.9, "R", 0, 0, 0.0) for pid in range(100, 108)}
        procs[200] = delta(200, 0.001, "D", 300 * 1024, 0, 0.8)
        procs[201] = delta(201, 0.2, "S", 2**30, 2**30, 0.0)
        samples.append(Sample(
            t=float(k + 1), dt=1.0, wall=0.0, cpu_util=[1.0, 1.0], util=1.0, iowait=0.1,
            ctxt_rate=100.0, fork_rate=0.0, procs_running=8, procs_blocked=1,
            load=(8.0, 8.0, 8.0), psi={}, rq_wait=6.0, nprocs=20, cost_s=0.001,
            procs=procs))
    out = summary_mod.build(samples, "normal", 8, [], 1.0)
    assert {e["pid"] for e in out["top"]} == set(range(100, 108))
    io = {e["pid"]: e for e in out["io_top"]}
    assert list(io) == [201, 200]  # the most bytes first
    assert io[201]["wr_kbs"] == io[201]["io_kbs"] == 2**20
    assert io[200]["wr_kbs"] == 0 and io[200]["io_kbs"] == 300
    assert io[200]["d_frac"] == 1 and io[200]["blkio"] == 0.8
    assert "io_top" not in summary_mod.build(samples, "brief", 8, [], 1.0)
