"""memcached: memcached + a seeded load generator beside a CPU hog.

memcached runs through ``RUN_DIR/bin/memcached`` (its command line names the
run) on a free loopback port, 2 worker threads, 64 MB, no UDP.  The driver
loops ``python -m schedcp_bench.loadgen memcached`` (4 connections, 3000
requests, 90 % get / 10 % set over 1000 keys, the sequence drawn from the
seed); a ``t1_hog`` with one spinning thread per CPU is the batch load.
Figures: p50/p99 request latency, requests per second, the hog's rate.
"""

from __future__ import annotations

import os
from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    free_port,
    good,
    hog_figures,
    median,
    ncpu,
    python_argv,
    tool,
    wait_ready,
)

REQUESTS = 3000
CONNS = 4


class MemcachedSvc(BenchWorkload):
    """memcached under a seeded closed-loop get/set load, beside a CPU hog."""

    name = "memcached"
    description = ("memcached (loopback TCP, 2 threads) + seeded closed-loop get/set load "
                   "generator, beside a CPU hog with one thread per CPU")
    packages = ("memcached", "gcc", "libc6-dev")
    commands = ("memcached", "cc")
    natives = ("t1hog",)
    goal = "latency"
    quick = False
    warmup = 1.0
    metrics = (
        Metric("p99_us", "us", "lower", 1.0, "request latency p99 (median of runs)"),
        Metric("p50_us", "us", "lower", 0.5, "request latency p50 (median of runs)"),
        Metric("rps", "req/s", "higher", 1.0, "requests per second"),
        Metric("batch_rate", "M iter/s", "higher", 0.5, "batch load (hog) throughput"),
    )
    slos = (
        SLO("p99_us", "<=", 50000.0, hard=True),
        SLO("rps", ">=", 500.0, hard=True),
        SLO("p99_us", "<=", 2000.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start memcached, the hog and (once memcached answers) the load driver."""
        session = self.new_session(run_dir)
        port = free_port()
        argv = [tool(session.dir, "memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                "-t", "2", "-m", "64"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # memcached refuses to run as root without -u
        server = session.spawn(argv)
        wait_ready(session, server, "memcached", ("127.0.0.1", port))
        hog = self.spawn_hog(session, ncpu())
        load = python_argv("schedcp_bench.loadgen", "memcached", f"127.0.0.1:{port}",
                           "--requests", str(REQUESTS), "--conns", str(CONNS),
                           "--seed", str(seed), "--tag", str(session.dir))
        driver = self.spawn_driver(session, load, "schedcp_bench.loadgen:parse")
        session.roles = {"latency": [server.pid, driver.pid], "batch": [hog.pid],
                         "noisy": [hog.pid]}
        session.extra["port"] = port
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median run figures and the hog's rate over the window."""
        recs = good(session.records(t0, t1), "p99_us", "rps")
        return {
            "p99_us": median(r["p99_us"] for r in recs),
            "p50_us": median(r["p50_us"] for r in recs),
            "rps": median(r["rps"] for r in recs),
            "batch_rate": hog_figures(session.dir / "hog.jsonl", t0, t1)["rate"],
        }
