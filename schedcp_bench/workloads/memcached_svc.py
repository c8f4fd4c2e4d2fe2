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

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import free_port, python_argv, tool
from schedcp_bench.workloads.service import Service, ServiceBesideHog

REQUESTS = 3000
CONNS = 4


class MemcachedSvc(ServiceBesideHog):
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
    figures = {"p99_us": ("p99_us", 1.0), "p50_us": ("p50_us", 1.0), "rps": ("rps", 1.0)}
    metrics = (
        Metric("p99_us", "us", "lower", 1.0, "request latency p99 (median of runs)"),
        Metric("p50_us", "us", "lower", 0.5, "request latency p50 (median of runs)"),
        Metric("rps", "req/s", "higher", 1.0, "requests per second"),
        Metric("batch_rate", "M iter/s", "higher", 0.5, "batch load (hog) throughput"),
    )
    slos = (
        SLO("p99_us", "<=", 50000.0, hard=True),
        SLO("rps", ">=", 500.0, hard=True),
        SLO("p99_us", "<=", 460.0, hard=False),
    )

    def serve(self, session: Session, seed: int) -> Service:
        """memcached on a free loopback port."""
        port = free_port()
        argv = [tool(session.dir, "memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                "-t", "2", "-m", "64"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # memcached refuses to run as root without -u
        return Service(session.spawn(argv), "memcached", ("127.0.0.1", port), {"port": port})

    def driver(self, session: Session, service: Service, seed: int) -> tuple[list[str], str]:
        """The seeded get/set load generator."""
        return (python_argv("schedcp_bench.loadgen", "memcached",
                            f"127.0.0.1:{service.extra['port']}",
                            "--requests", str(REQUESTS), "--conns", str(CONNS),
                            "--seed", str(seed), "--tag", str(session.dir)),
                "schedcp_bench.loadgen:parse")
