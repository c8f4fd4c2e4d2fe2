"""stress-ng --cyclic beside a stress-ng --cpu batch neighbour.

Two drivers: one loops ``stress-ng --cyclic 1`` (a SCHED_FIFO thread woken
every 500 us by clock_nanosleep for 1 s; stress-ng reports the latency
percentiles of its wake-ups), the other loops ``stress-ng --cpu NCPU -t 1``
(the batch neighbour; its bogo-ops per second are the neighbour's
throughput).  ``-k`` keeps the workers' names and command lines, so they
keep the comm ``stress-ng`` that policies match and the run directory the
session's regex matches.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, ncpu, read_log, tool

_PCT = re.compile(r"cyclic:\s+([0-9.]+)%:\s+([0-9]+) ns")
_MAX = re.compile(r"cyclic:\s+min:\s*([0-9]+) ns, max:\s*([0-9]+) ns")
_MEAN = re.compile(r"cyclic:\s+mean:\s*([0-9.]+) ns")
_CPU = re.compile(r"\]\s+cpu\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)")


def parse_cyclic(stdout: str, stderr: str) -> dict[str, Any]:
    """The cyclic stressor's latency percentiles and max (us)."""
    text = stdout + stderr
    pct = {float(p): int(ns) for p, ns in _PCT.findall(text)}
    top = _MAX.search(text)
    if 99.0 not in pct or not top:
        raise ValueError("no cyclic latency percentiles in stress-ng output")
    mean = _MEAN.search(text)
    return {"p50_us": pct.get(50.0, 0) / 1000, "p99_us": pct[99.0] / 1000,
            "max_us": int(top.group(2)) / 1000,
            "mean_us": float(mean.group(1)) / 1000 if mean else None}


def parse_cpu(stdout: str, stderr: str) -> dict[str, Any]:
    """The cpu stressor's bogo-ops and bogo-ops per second of real time."""
    found = _CPU.search(stdout + stderr)
    if not found:
        raise ValueError("no cpu metrics line in stress-ng output (--metrics-brief)")
    return {"bogo_ops": int(found.group(1)), "bogo_ops_per_s": float(found.group(5))}


class StressCyclic(BenchWorkload):
    """stress-ng cyclic latency beside a stress-ng cpu neighbour."""

    name = "stress-cyclic"
    description = ("stress-ng --cyclic (SCHED_FIFO, 500 us period) beside "
                   "stress-ng --cpu NCPU, both looped in 1 s runs")
    packages = ("stress-ng",)
    commands = ("stress-ng",)
    goal = "latency"
    warmup = 1.0
    metrics = (
        Metric("cyclic_p99_us", "us", "lower", 1.0, "cyclic wake-up latency, 99th percentile"),
        Metric("cyclic_max_us", "us", "lower", 0.25, "cyclic wake-up latency, maximum"),
        Metric("cpu_bogo_ops_per_s", "bogo-ops/s", "higher", 1.0,
               "batch neighbour throughput"),
    )
    slos = (
        SLO("cyclic_p99_us", "<=", 2000.0, hard=True),
        SLO("cpu_bogo_ops_per_s", ">=", 100.0, hard=True),
        SLO("cyclic_p99_us", "<=", 51.0, hard=False),
        SLO("cyclic_max_us", "<=", 340.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the cyclic driver and the cpu neighbour's driver."""
        session = self.new_session(run_dir)
        session.log = session.dir / "cyclic.jsonl"
        stress = tool(session.dir, "stress-ng")
        common = ["-k", "-t", "1", "--seed", str(seed)]
        cyclic = self.spawn_driver(
            session,
            [stress, "--cyclic", "1", "--cyclic-policy", "fifo", "--cyclic-sleep", "500000",
             *common],
            f"{__name__}:parse_cyclic")
        cpu_log = session.dir / "cpu.jsonl"
        session.extra["logs"] = {"cpu.jsonl": str(cpu_log)}
        cpu = self.spawn_driver(
            session, [stress, "--cpu", str(ncpu()), "--metrics-brief", *common],
            f"{__name__}:parse_cpu", log=cpu_log)
        session.roles = {"latency": [cyclic.pid], "batch": [cpu.pid], "noisy": [cpu.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median per-run cyclic percentiles and neighbour rate in the window."""
        cyc = good(session.records(t0, t1), "p99_us", "max_us")
        cpu = good(read_log(session.dir / "cpu.jsonl", t0, t1), "bogo_ops_per_s")
        return {
            "cyclic_p99_us": median(r["p99_us"] for r in cyc),
            "cyclic_max_us": median(r["max_us"] for r in cyc),
            "cpu_bogo_ops_per_s": median(r["bogo_ops_per_s"] for r in cpu),
        }
