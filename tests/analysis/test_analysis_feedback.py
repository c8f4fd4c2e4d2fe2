"""Tier-3 feedback over two windows of real samples."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.analysis.feedback import build, percentile, spread
from schedcpd.analysis.sampler import ProcDelta, Sample
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


def _sample(t: float, procs: dict[int, float], ppid: dict[int, int] | None = None) -> Sample:
    """A constructed sample: each pid in ``procs`` waited that many s/s for a CPU."""
    deltas = {pid: ProcDelta(pid, "p", (ppid or {}).get(pid, 1), pid, "R", 1, None, 0.1, 0.0,
                             0.1, w, 3, None, None, 0, 0, "schedstat", 0.0)
              for pid, w in procs.items()}
    return Sample(t, 1.0, t, [0.5], 0.5, 0.0, 10.0, 0.0, 1, 0, (0.0, 0.0, 0.0), {}, 0.0, 1, 0.0,
                  deltas)


def test_values_line_up_per_sample() -> None:
    # pid 8 appears in the third sample of the before window: its series has a
    # null where it did not exist yet, so every series of a window lines up.
    before = [_sample(1.0, {7: 0.5}), _sample(2.0, {7: 0.4}), _sample(3.0, {7: 0.3, 8: 0.2})]
    after = [_sample(4.0, {7: 0.1, 8: 0.1}), _sample(5.0, {8: 0.0})]
    fb = build(before, after, (0.5, 3.0), (3.5, 5.0), [7, 8, 9], None, {8: 2.5, 7: 0.0})
    assert fb["metrics"]["rq_wait"]["before"]["values"] == [0.0, 0.0, 0.0]
    assert fb["before"]["times"] == [1.0, 2.0, 3.0] and fb["after"]["times"] == [4.0, 5.0]
    w7, w8 = fb["pids"]["7"]["wait"], fb["pids"]["8"]["wait"]
    assert w7["before"]["values"] == [0.5, 0.4, 0.3]
    assert w7["after"]["values"] == [0.1, 0.0]  # known since 0.0, no record: idle
    assert w8["before"]["values"] == [None, None, 0.2]
    assert w8["before"]["n"] == 1 and w8["before"]["median"] == 0.2
    assert w8["after"]["values"] == [0.1, 0.0]
    assert fb["pids"]["9"]["wait"]["before"] is None
    assert fb["notes"] == ["pid 9: no activity recorded in either window"]


def test_a_driver_gets_the_figure_of_its_tree() -> None:
    # Driver 100 starts job 200 (recorded only when born), which runs worker 300;
    # then job 201 in the after window.  Pid 7 has no children: no "tree".
    parents = {200: 100, 300: 200, 201: 100}
    before = [_sample(1.0, {100: 0.0, 7: 0.1}), _sample(2.0, {200: 0.0, 300: 0.4}, parents),
              _sample(3.0, {300: 0.5}, parents)]
    after = [_sample(4.0, {201: 0.1}, parents), _sample(5.0, {201: 0.2, 100: 0.0}, parents)]
    fb = build(before, after, (0.5, 3.0), (3.5, 5.0), [100, 7], None, {100: 0.5, 7: 0.5})
    tree = fb["pids"]["100"]["tree"]["wait"]
    assert tree["before"]["values"] == [0.0, 0.4, 0.5]
    assert tree["after"]["values"] == [0.1, 0.2]
    assert fb["pids"]["100"]["wait"]["before"]["values"] == [0.0, 0.0, 0.0]  # its own
    assert fb["pids"]["100"]["tree"]["cpu"]["after"]["values"] == [0.1, 0.2]
    assert "tree" not in fb["pids"]["7"]
