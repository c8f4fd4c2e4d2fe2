"""The sampler's rate and ring, and what a summary says when TaskStats is out of reach."""

from __future__ import annotations

import asyncio
import json
import statistics

from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.analysis.sampler import Sampler
from tests.analysis.conftest import as_nobody


def test_defaults_are_1_hz_over_a_minute_with_five_minutes_kept() -> None:
    a = WorkloadAnalyzer()
    assert a.sampler.rate_hz == 1.0
    assert a.window_s == 60.0
    assert a.sampler.history_s == 300.0


async def test_configured_rate_and_ring_window() -> None:
    sampler = Sampler(rate_hz=20, history_s=0.5)
    await sampler.start()
    try:
        await asyncio.sleep(1.5)
    finally:
        await sampler.stop()
    ring = sampler.samples
    last = ring[-1]
    # Only the last history_s seconds are kept, whatever ran before.
    assert all(s.t >= last.t - 0.5 for s in ring)
    assert len(ring) <= int(0.5 * 20) + 2
    # Far more often than the 1 Hz default (timing is loose on a busy host).
    assert len(ring) >= 3
    assert statistics.median(s.dt for s in ring) < 0.5
    assert sampler.window(last.t - 0.2, last.t) == [s for s in ring if s.t >= last.t - 0.2]


async def _brief_after(seconds: float) -> dict:
    a = WorkloadAnalyzer(rate_hz=10)
    await a.start()
    try:
        await asyncio.sleep(seconds)
        return await a.summary_async("brief")
    finally:
        await a.stop()


def test_summary_says_taskstats_needs_root_when_not_root() -> None:
    # A forked child drops to nobody and builds a summary from real samples.
    brief = json.loads(as_nobody(lambda: json.dumps(asyncio.run(_brief_after(0.5))).encode()))
    assert brief["n"] >= 1
    assert "taskstats: unavailable (not root)" in brief["notes"]
    # schedstat still gives the figures
    assert "rqwait" in brief and brief["cs"] > 0
