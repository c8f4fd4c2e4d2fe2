"""The event-loop stall monitor: a real loop, blocked by a real synchronous call."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from schedcpd.loop_monitor import LoopMonitor


def _block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # what a synchronous call on the loop does to every client


async def _run(monitor: LoopMonitor, block: float, idle: float) -> None:
    monitor.start()
    try:
        await asyncio.sleep(idle)
        if block:
            _block_the_loop_for(block)
            await asyncio.sleep(monitor.tick * 4)  # the loop beats again; the end is logged
            for _ in range(50):
                if monitor.longest:
                    break
                await asyncio.sleep(monitor.tick)
    finally:
        monitor.stop()


def test_a_blocked_loop_is_reported_with_where_it_is_stuck(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> LoopMonitor:
        stalls: list[int] = []
        monitor = LoopMonitor(asyncio.get_running_loop(), threshold=0.3, tick=0.05,
                              on_stall=lambda: stalls.append(1))
        await _run(monitor, block=2.0, idle=0.2)
        assert len(stalls) == monitor.stalls
        return monitor

    with caplog.at_level(logging.WARNING, logger="schedcpd.loop_monitor"):
        monitor = asyncio.run(main())
    assert monitor.stalls == 1
    # The gap between two beats spans the whole blocking call.
    assert monitor.longest >= 2.0
    stuck = [r.getMessage() for r in caplog.records if "has not run" in r.getMessage()]
    assert len(stuck) == 1, caplog.text
    assert "_block_the_loop_for" in stuck[0] and "time.sleep(seconds)" in stuck[0]
    again = [r.getMessage() for r in caplog.records if "ran again after" in r.getMessage()]
    assert len(again) == 1, caplog.text
    # A sleeping thread is stuck in a call, not starved: it ran (almost) nothing.
    ran = re.search(r"its thread ran ([0-9.]+) s on a CPU and waited ([0-9.]+) s", again[0])
    assert ran is not None, again[0]
    assert float(ran.group(1)) < 1.0, again[0]


def test_a_loop_that_runs_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> LoopMonitor:
        monitor = LoopMonitor(asyncio.get_running_loop(), threshold=3.0, tick=0.05)
        await _run(monitor, block=0, idle=1.0)
        return monitor

    with caplog.at_level(logging.WARNING, logger="schedcpd.loop_monitor"):
        monitor = asyncio.run(main())
    assert (monitor.stalls, monitor.longest) == (0, 0.0)
    assert not caplog.records


def test_a_threshold_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="positive"):
            LoopMonitor(loop, threshold=0)
    finally:
        loop.close()
