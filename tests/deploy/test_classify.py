"""Guard roles from a real baseline: a contended hog is not mistaken for a waker.

On a busy host a CPU hog gets a small share of its CPU, as small as a periodic
waker's, so CPU share alone cannot tell them apart; how each gives up the CPU
can: the hog is only ever preempted, the waker blocks.  The breaker must give
the hog throughput guards and the waker latency guards however busy the CPU.
"""

from __future__ import annotations

import os
import time

import pytest

from plugins.scheduler.guards import CpuGuards, CpuSample, classify
from schedcpd.breaker import BreakerSettings, GroupSample
from tests.harness import Procs, wait_workers_ready


def _baseline(groups: dict[str, list[int]], seconds: float) -> list[dict[str, GroupSample]]:
    sampler = CpuGuards(groups)
    sampler.sample()
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        out.append(sampler.sample())
    return out


def test_contended_hog_is_throughput_and_waker_is_latency() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    modes = ["spin", "periodic", "spin", "spin", "spin"]
    with Procs("schedcp-classify-", new_session=False) as workers:
        procs = [workers.worker(mode) for mode in modes]
        for proc in procs:  # everything on one CPU: the hog gets about a quarter of it
            os.sched_setaffinity(proc.pid, {0})
        wait_workers_ready(procs)
        baseline = _baseline({"hog": [procs[0].pid], "waker": [procs[1].pid]}, 3.0)
    hog_share = sorted(x["hog"].throughput for x in baseline)[len(baseline) // 2]
    settings = BreakerSettings()
    assert hog_share < settings.interactive_share, "the hog was not contended"
    roles = classify(baseline, {"hog": "beneficiary", "waker": "beneficiary"}, settings)
    assert roles == {"hog": "throughput", "waker": "latency"}
    assert classify(baseline, {"hog": "donor", "waker": "donor"}, settings) == \
        {"hog": "donor", "waker": "latency"}


def test_too_few_switches_fall_back_to_cpu_share() -> None:
    def sample(share: float) -> dict[str, GroupSample]:
        return {"g": CpuSample(0.0, None, share, 1, 1, voluntary=1, involuntary=0)}

    settings = BreakerSettings()
    assert classify([sample(0.95)] * 10, {"g": "beneficiary"}, settings) == {"g": "throughput"}
    assert classify([sample(0.05)] * 10, {"g": "beneficiary"}, settings) == {"g": "latency"}
