"""perf bench sched pipe: two tasks ping-ponging over a pair of pipes.

The driver runs ``perf bench sched pipe -l 40000`` again and again; each
round trip is two wake-ups, so the figures measure the scheduler's wake-up
and context-switch path: operations per second and microseconds per
operation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, tool

_USECS = re.compile(r"([0-9.]+)\s*usecs/op")
_OPS = re.compile(r"([0-9.]+)\s*ops/sec")
LOOPS = 40000


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """perf bench pipe's ``usecs/op`` and ``ops/sec``."""
    usecs, ops = _USECS.search(stdout), _OPS.search(stdout)
    if not usecs or not ops:
        raise ValueError("no usecs/op or ops/sec in perf bench output")
    return {"us_per_op": float(usecs.group(1)), "ops_per_s": float(ops.group(1))}


class PerfPipe(BenchWorkload):
    """perf bench sched pipe, looped."""

    name = "perf-pipe"
    description = f"perf bench sched pipe -l {LOOPS} (pipe ping-pong of two tasks), looped"
    packages = ("linux-perf",)
    commands = ("perf",)
    goal = "latency"
    warmup = 0.5
    metrics = (
        Metric("ops_per_s", "ops/s", "higher", 1.0, "pipe round trips per second (median)"),
        Metric("us_per_op", "us", "lower", 0.0, "microseconds per round trip (reported)"),
    )
    slos = (
        SLO("ops_per_s", ">=", 5000.0, hard=True),
        SLO("us_per_op", "<=", 48.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the driver looping perf bench sched pipe (nothing to seed)."""
        session = self.new_session(run_dir)
        argv = [tool(session.dir, "perf"), "bench", "sched", "pipe", "-l", str(LOOPS)]
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"latency": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median figures of the runs inside the window."""
        recs = good(session.records(t0, t1), "ops_per_s", "us_per_op")
        return {"ops_per_s": median(r["ops_per_s"] for r in recs),
                "us_per_op": median(r["us_per_op"] for r in recs)}
