"""t1-probe: a periodic latency probe beside a CPU hog (the T1 scenario).

``t1_probe`` (2 threads, each woken by an absolute 2 ms timer, 200 us of CPU
work per period, staggered by half a period) logs a wake-up and response-time
histogram every 0.5 s; ``t1_hog`` (one spinning thread per CPU) logs its
iterations and CPU time every 0.5 s.  Both run until the session stops, so
every 0.5 s interval is a measured unit.
"""

from __future__ import annotations

from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    hog_figures,
    ncpu,
    probe_figures,
    probe_histogram,
)

PERIOD_US = 2000
WORK_US = 200
PROBE_THREADS = 2


class T1Probe(BenchWorkload):
    """The latency probe beside a CPU hog."""

    name = "t1-probe"
    description = ("periodic latency probe (2 threads, 200 us every 2 ms) beside a "
                   "CPU hog with one spinning thread per CPU")
    packages = ("gcc", "libc6-dev")
    commands = ("cc",)
    natives = ("t1probe", "t1hog")
    goal = "latency"
    warmup = 1.0
    metrics = (
        Metric("wake_p99_us", "us", "lower", 1.0, "probe wake-up latency, 99th percentile"),
        Metric("resp_p99_us", "us", "lower", 0.5,
               "probe response time (timer expiry to work done), 99th percentile"),
        # The quiet default misses 0.2-0.5 % of periods: under 1 % is not told apart.
        Metric("missed_pct", "%", "lower", 0.25, "periods the probe missed entirely",
               floor=1.0),
        Metric("hog_rate", "M iter/s", "higher", 1.0, "CPU hog throughput"),
        Metric("wake_p50_us", "us", "lower", 0.0, "probe wake-up latency, median (reported)"),
        Metric("hog_cpu_pct", "%", "higher", 0.0, "share of all CPUs the hog got (reported)"),
    )
    slos = (
        SLO("hog_cpu_pct", ">=", 25.0, hard=True),
        SLO("missed_pct", "<=", 25.0, hard=True),
        SLO("wake_p99_us", "<=", 60.0, hard=False),
        SLO("resp_p99_us", "<=", 290.0, hard=False),
        SLO("missed_pct", "<=", 0.31, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the hog, then the probe (the batch job is already running)."""
        session = self.new_session(run_dir)
        session.log = session.dir / "probe.jsonl"
        hog = self.spawn_hog(session, ncpu())
        probe = self.spawn_probe(session, PERIOD_US, WORK_US, PROBE_THREADS)
        session.roles = {"latency": [probe.pid], "foreground": [probe.pid],
                         "batch": [hog.pid], "noisy": [hog.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Probe percentiles and hog throughput over the window."""
        probe = probe_figures(session.log, t0, t1)
        hog = hog_figures(session.dir / "hog.jsonl", t0, t1)
        return {
            "wake_p99_us": probe["wake_p99_us"],
            "resp_p99_us": probe["resp_p99_us"],
            "missed_pct": probe["missed_pct"],
            "hog_rate": hog["rate"],
            "wake_p50_us": probe["wake_p50_us"],
            "hog_cpu_pct": hog["cpu_pct"],
        }

    def distribution(self, session: Session, t0: float,
                     t1: float) -> dict[str, list[tuple[float, int]]]:
        """The probe's wake-up latency histogram (us) over the window."""
        return {"probe wake-up latency (us)": probe_histogram(session.log, t0, t1)}
