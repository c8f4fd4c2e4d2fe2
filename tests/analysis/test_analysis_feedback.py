"""Tier-3 feedback over two windows of real samples."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.analysis.feedback import percentile, spread
from schedcpd.errors import InvalidArgument


async def test_hog_started_in_second_window(spawn, argv) -> None:
    analyzer = WorkloadAnalyzer(rate_hz=5, window_s=30)
    await analyzer.start()
    try:
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await asyncio.sleep(3)
        t1 = time.monotonic()
        hogs = [spawn(*argv.hog()) for _ in range(2)]
        analyzer.watch([h.pid for h in hogs])  # recorded even among 400 busy tenants
        await asyncio.sleep(0.4)  # let the hogs get going before the window opens
        t2 = time.monotonic()
        await asyncio.sleep(3)
        t3 = time.monotonic()
        await asyncio.sleep(0.3)  # one more sample to close the window
    finally:
        await analyzer.stop()
    pids = [h.pid for h in hogs]
    fb = analyzer.feedback((t0, t1), (t2, t3), pids=pids)

    before = analyzer.sampler.window(t0, t1)
    after = analyzer.sampler.window(t2, t3)
    assert fb["before"]["samples"] == len(before) >= 5, fb["before"]  # 15 planned
    assert fb["after"]["samples"] == len(after) >= 5, fb["after"]
    assert fb["notes"] == []
    # the figures are exactly the per-sample series' statistics
    util = fb["metrics"]["util"]
    b_med = statistics.median(s.util for s in before)
    a_med = statistics.median(s.util for s in after)
    assert util["before"]["median"] == pytest.approx(b_med, abs=1e-6)
    assert util["after"]["median"] == pytest.approx(a_med, abs=1e-6)
    assert util["delta"] == pytest.approx(a_med - b_med, abs=1e-5)
    if b_med:
        assert util["ratio"] == pytest.approx(a_med / b_med, rel=1e-3)
    else:  # a quiet machine: nothing ran before the hogs, no ratio to give
        assert util["ratio"] is None
    assert util["after"]["p10"] <= util["after"]["median"] <= util["after"]["p90"]
    for name in ("rq_wait", "psi_cpu_some", "ctxt_rate", "util"):
        assert fb["metrics"][name]["before"]["n"] == len(before)
    # two hogs on this machine's cores: busier and more run-queue wait, unless
    # other tenants had already saturated it during the baseline
    if b_med < 0.5:
        assert a_med > b_med, util
    for pid in pids:
        per = fb["pids"][str(pid)]
        assert per["cpu"]["before"] is None  # did not exist yet
        assert per["cpu"]["after"]["n"] == per["wait"]["after"]["n"] == len(after)
        # A hog is always runnable: it runs or waits for a CPU all the time,
        # whatever else loads the host (with 200 runnable tasks it gets ~1 %).
        busy = per["cpu"]["after"]["mean"] + per["wait"]["after"]["mean"]
        assert busy > 0.5, per


def test_window_validation() -> None:
    a = WorkloadAnalyzer()
    with pytest.raises(InvalidArgument):
        a.feedback((2.0, 1.0), (3.0, 4.0))
    with pytest.raises(InvalidArgument):
        a.feedback((1.0, float("nan")), (3.0, 4.0))
    with pytest.raises(InvalidArgument):
        a.feedback((1.0, 2.0), (3.0, 4.0), pids=[-1])
    empty = a.feedback((1.0, 2.0), (3.0, 4.0))
    assert empty["metrics"]["util"] == {"before": None, "after": None, "delta": None,
                                        "ratio": None}
    assert len(empty["notes"]) == 2


def test_percentiles() -> None:
    data = [float(x) for x in range(1, 12)]  # 1..11
    assert percentile(data, 10) == pytest.approx(2.0)
    assert percentile(data, 90) == pytest.approx(10.0)
    assert percentile([5.0], 90) == 5.0
    s = spread([3.0, 1.0, 2.0, float("nan")])
    assert s == {"median": 2.0, "p10": 1.2, "p90": 2.8, "mean": 2.0, "n": 3}
