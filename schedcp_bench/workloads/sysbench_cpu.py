"""sysbench cpu: prime-number verification on one thread per CPU.

The driver runs ``sysbench cpu --threads=NCPU --time=1`` again and again;
the unit's figure is sysbench's events per second.  A pure throughput
workload: a policy should not cost it anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, ncpu, tool

_EPS = re.compile(r"events per second:\s*([0-9.]+)")


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """sysbench's ``events per second``."""
    found = _EPS.search(stdout)
    if not found:
        raise ValueError("no 'events per second' in sysbench output")
    return {"events_per_s": float(found.group(1))}


class SysbenchCpu(BenchWorkload):
    """sysbench cpu, looped."""

    name = "sysbench-cpu"
    description = "sysbench cpu --threads=NCPU --time=1 --cpu-max-prime=10000, looped"
    packages = ("sysbench",)
    commands = ("sysbench",)
    goal = "throughput"
    warmup = 0.5
    metrics = (Metric("events_per_s", "events/s", "higher", 1.0,
                      "sysbench cpu events per second (median)"),)
    slos = (
        SLO("events_per_s", ">=", 200.0, hard=True),
        SLO("events_per_s", ">=", 7600.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the driver looping sysbench cpu (seeded)."""
        session = self.new_session(run_dir)
        argv = [tool(session.dir, "sysbench"), "cpu", f"--threads={ncpu()}", "--time=1",
                "--cpu-max-prime=10000", f"--rand-seed={seed}", "run"]
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"batch": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median events per second of the runs inside the window."""
        recs = good(session.records(t0, t1), "events_per_s")
        return {"events_per_s": median(r["events_per_s"] for r in recs)}
