"""The classifier labels real workloads the test starts, sampled by the real sampler."""

from __future__ import annotations

import asyncio
import json

import pytest

from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.analysis.classify import ProcWindow, classify

pytestmark = pytest.mark.slow


async def test_four_workloads_are_classified(spawn, argv, tmp_path) -> None:
    procs = {
        "cpu-bound": spawn(*argv.hog()),
        "io-bound": spawn(*argv.dd(tmp_path / "dd.dat")),
        "interactive": spawn(*argv.workload("waker")),
        "churn": spawn(*argv.make(tmp_path), cwd=tmp_path),
    }
    # Wider per-sample limits than the defaults: other tenants of a shared CI
    # host may keep hundreds of processes busier than these four.
    analyzer = WorkloadAnalyzer(rate_hz=4, window_s=8, top_n=40, taskstats_top=128,
                                max_records=256)
    await analyzer.start()
    try:
        await asyncio.sleep(9)
        summary = analyzer.summary("normal")
    finally:
        await analyzer.stop()
    for p in procs.values():
        assert p.poll() is None, f"workload {p.args} ended early"
    by_pid = {e["pid"]: e for e in summary["top"]}
    got = {want: by_pid.get(p.pid, {}).get("cls") for want, p in procs.items()}
    detail = {want: by_pid.get(p.pid) for want, p in procs.items()}
    assert got == {k: k for k in procs}, json.dumps(detail, indent=1)
    # the make tree is one process group rooted at make itself
    churn = by_pid[procs["churn"].pid]
    assert churn["root"] == f"{procs['churn'].pid}:make"
    assert churn["child_cpu"] > churn["own_cpu"]


def _window(**kw: float) -> ProcWindow:
    w = ProcWindow(pid=1, comm="x", ppid=0, pgrp=1, threads=1, cgroup="/", state="S",
                   first_seen=0.0, span_s=10.0, samples=10)
    for k, v in kw.items():
        setattr(w, k, v)
    return w


@pytest.mark.parametrize(("fields", "label"), [
    ({"child_cpu_s": 1.0}, "churn"),
    ({"spawned": 20}, "churn"),
    ({"d_samples": 5, "cpu_s": 0.5}, "io-bound"),
    ({"io_bytes": 10 << 20, "cpu_s": 0.3}, "io-bound"),
    ({"cpu_s": 6.0}, "cpu-bound"),
    # squeezed hog: 30 % CPU, waits the rest, never sleeps
    ({"cpu_s": 3.0, "wait_s": 6.0, "ts_dt": 10.0, "vcs": 0}, "cpu-bound"),
    # squeezed harder: 5 % CPU, but runnable whenever sampled
    ({"cpu_s": 0.5, "r_samples": 9, "ts_dt": 10.0, "vcs": 2}, "cpu-bound"),
    # a starved synchronous writer: little I/O per second, a block per wakeup
    ({"cpu_s": 0.1, "io_bytes": 2 << 20, "vcs": 4000, "ts_dt": 10.0}, "io-bound"),
    # an interactive task that logs a little is still interactive
    ({"cpu_s": 0.5, "io_bytes": 400 << 10, "vcs": 4000, "ts_dt": 10.0}, "interactive"),
    ({"cpu_s": 0.5, "vcs": 4000, "ts_dt": 10.0}, "interactive"),
    ({"cpu_s": 0.5, "slices": 4000}, "interactive"),
    ({"cpu_s": 0.01}, "idle"),
    ({"cpu_s": 2.0, "vcs": 50, "ts_dt": 10.0}, "mixed"),
])
def test_rules(fields: dict[str, float], label: str) -> None:
    assert classify(_window(**fields)) == label
