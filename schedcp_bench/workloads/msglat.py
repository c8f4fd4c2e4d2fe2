"""msglat: a schbench-like message/worker wake-up latency benchmark, not schbench.

schbench is not packaged in Debian; ``schedcp_bench/native/msglat.c`` is an
equivalent written here (plain C, pthreads and futexes): message threads wake
their worker threads, each worker spins a short request and replies.  The
driver loops ``msglat -m 2 -t 2 -s 20 -r 1`` (2 message threads with 2
workers each, 20 us of work per request, 1 s per run after a 0.1 s warm-up);
each run prints wake-up latency percentiles and requests per second as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, link, median


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """msglat's JSON line."""
    out: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    if out.get("benchmark") != "msglat":
        raise ValueError("not msglat output")
    return out


class Msglat(BenchWorkload):
    """msglat looped by the driver."""

    name = "msglat"
    description = ("msglat (schbench-like, not schbench): 2 message threads x 2 workers, "
                   "20 us requests, 1 s runs, looped")
    packages = ("gcc", "libc6-dev")
    commands = ("cc",)
    natives = ("msglat",)
    goal = "latency"
    warmup = 0.5
    metrics = (
        Metric("wake_p99_us", "us", "lower", 1.0, "worker wake-up latency, 99th percentile"),
        Metric("rps", "req/s", "higher", 1.0, "requests completed per second"),
        Metric("wake_p999_us", "us", "lower", 0.25, "worker wake-up latency, 99.9th percentile"),
        Metric("wake_p50_us", "us", "lower", 0.0, "worker wake-up latency, median (reported)"),
    )
    slos = (
        SLO("wake_p99_us", "<=", 20000.0, hard=True),
        SLO("rps", ">=", 1000.0, hard=True),
        SLO("wake_p99_us", "<=", 78.0, hard=False),
        SLO("rps", ">=", 43000.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the driver looping msglat (run through RUN_DIR/bin/msglat)."""
        session = self.new_session(run_dir)
        argv = [link(session.dir, self.binary("msglat")), "-m", "2", "-t", "2", "-s", "20",
                "-r", "1", "-w", "0.1", "--seed", str(seed)]
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"latency": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median per-run figures inside the window."""
        recs = good(session.records(t0, t1), "wake_p99_us", "rps")
        return {key: median(r[key] for r in recs)
                for key in ("wake_p99_us", "rps", "wake_p999_us", "wake_p50_us")}
