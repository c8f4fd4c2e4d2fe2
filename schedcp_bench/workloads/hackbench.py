"""hackbench (rt-tests): groups of processes passing messages over socket pairs.

The driver runs ``hackbench -g 2 -l 400`` (2 groups of 20 senders and 20
receivers, 400 messages of 100 bytes each) again and again; the unit's
figure is hackbench's own "Time:" (the messaging phase, without start-up).
Nothing else runs beside it: the scheduler's wake-up and balancing paths are
the workload.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, tool

_TIME = re.compile(r"^Time:\s*([0-9.]+)", re.MULTILINE)


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """hackbench's ``Time: S`` line."""
    found = _TIME.search(stdout)
    if not found:
        raise ValueError("no 'Time:' line in hackbench output")
    return {"time_s": float(found.group(1))}


class Hackbench(BenchWorkload):
    """hackbench looped by the driver."""

    name = "hackbench"
    description = "hackbench -g 2 -l 400 (80 processes messaging over sockets), looped"
    packages = ("rt-tests",)
    commands = ("hackbench",)
    goal = "throughput"
    warmup = 0.5
    metrics = (Metric("time_s", "s", "lower", 1.0, "hackbench run time (median of runs)"),)
    slos = (
        SLO("time_s", "<=", 5.0, hard=True),
        SLO("time_s", "<=", 0.67, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the driver looping hackbench (hackbench has no randomness to seed)."""
        session = self.new_session(run_dir)
        argv = [tool(session.dir, "hackbench"), "-g", "2", "-l", "400", "-s", "100"]
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"batch": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median hackbench time of the runs inside the window."""
        recs = good(session.records(t0, t1), "time_s")
        return {"time_s": median(r["time_s"] for r in recs)}
