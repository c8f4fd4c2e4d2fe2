"""perf bench sched messaging: perf's hackbench-like messaging benchmark.

The driver runs ``perf bench sched messaging -g 2 -l 400`` (2 groups of 20
sender and 20 receiver processes) again and again; the unit's figure is
perf's "Total time".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, tool

_TOTAL = re.compile(r"Total time:\s*([0-9.]+)\s*\[sec\]")


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """perf bench's ``Total time: S [sec]``."""
    found = _TOTAL.search(stdout)
    if not found:
        raise ValueError("no 'Total time' in perf bench output")
    return {"time_s": float(found.group(1))}


class PerfMessaging(BenchWorkload):
    """perf bench sched messaging, looped."""

    name = "perf-messaging"
    description = "perf bench sched messaging -g 2 -l 400 (80 processes), looped"
    packages = ("linux-perf",)
    commands = ("perf",)
    goal = "throughput"
    warmup = 0.5
    metrics = (Metric("time_s", "s", "lower", 1.0, "perf messaging total time (median)"),)
    slos = (
        SLO("time_s", "<=", 5.0, hard=True),
        SLO("time_s", "<=", 0.65, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the driver looping perf bench sched messaging (nothing to seed)."""
        session = self.new_session(run_dir)
        argv = [tool(session.dir, "perf"), "bench", "sched", "messaging", "-g", "2", "-l", "400"]
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"batch": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median total time of the runs inside the window."""
        recs = good(session.records(t0, t1), "time_s")
        return {"time_s": median(r["time_s"] for r in recs)}
