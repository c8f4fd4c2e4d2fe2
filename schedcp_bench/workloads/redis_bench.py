"""redis: redis-server + redis-benchmark beside a CPU-bound batch load.

redis-server runs with its own config in the run directory: a private unix
socket, no TCP port, no persistence (no RDB, no AOF), its process title
carrying the socket path.  The driver loops ``redis-benchmark -t get,set
-n 20000 -c 8 -r 10000 --csv`` against it (redis-benchmark takes no seed: its
random keys are not reproducible); a ``t1_hog`` with one spinning thread per
CPU is the batch load.  Figures: the worse of GET/SET p99 latency and their
mean requests per second; the hog's rate.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    good,
    hog_figures,
    median,
    ncpu,
    tool,
    wait_ready,
)

REQUESTS = 20000
CONFIG = """\
# schedcp-bench redis workload: private, no persistence
port 0
unixsocket {sock}
unixsocketperm 700
save ""
appendonly no
daemonize no
dir {dir}
logfile {dir}/redis.log
databases 1
proc-title-template "{{title}} {{unixsocket}} {{config-file}}"
"""


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """redis-benchmark's CSV: the worst p99 (ms) and mean rps over its tests."""
    rows = list(csv.DictReader(io.StringIO(stdout)))
    if not rows:
        raise ValueError("no CSV rows in redis-benchmark output")
    return {
        "p99_ms": max(float(r["p99_latency_ms"]) for r in rows),
        "rps": sum(float(r["rps"]) for r in rows) / len(rows),
        "tests": [r["test"] for r in rows],
    }


class RedisBench(BenchWorkload):
    """redis-server + redis-benchmark beside a CPU hog."""

    name = "redis"
    description = ("redis-server (unix socket, no persistence) + redis-benchmark get/set "
                   "beside a CPU hog with one thread per CPU")
    packages = ("redis-server", "redis-tools", "gcc", "libc6-dev")
    commands = ("redis-server", "redis-benchmark", "cc")
    natives = ("t1hog",)
    goal = "latency"
    warmup = 1.0
    metrics = (
        Metric("p99_ms", "ms", "lower", 1.0, "redis-benchmark p99 latency (worse of GET/SET)"),
        Metric("rps", "req/s", "higher", 1.0, "redis-benchmark requests per second"),
        Metric("batch_rate", "M iter/s", "higher", 0.5, "batch load (hog) throughput"),
    )
    slos = (
        SLO("p99_ms", "<=", 50.0, hard=True),
        SLO("rps", ">=", 2000.0, hard=True),
        SLO("p99_ms", "<=", 2.0, hard=False),
        SLO("rps", ">=", 40000.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start redis-server, the hog, and (once redis answers) the benchmark driver."""
        session = self.new_session(run_dir)
        sock = session.dir / "redis.sock"
        conf = session.dir / "redis.conf"
        conf.write_text(CONFIG.format(sock=sock, dir=session.dir))
        server = session.spawn([tool(session.dir, "redis-server"), str(conf)])
        wait_ready(session, server, "redis-server", str(sock))
        hog = self.spawn_hog(session, ncpu())
        argv = [tool(session.dir, "redis-benchmark"), "-s", str(sock), "-n", str(REQUESTS),
                "-c", "8", "-t", "get,set", "-r", "10000", "--csv", "--precision", "3"]
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"latency": [server.pid, driver.pid], "batch": [hog.pid],
                         "noisy": [hog.pid]}
        session.extra["socket"] = str(sock)
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median benchmark figures and the hog's rate over the window."""
        recs = good(session.records(t0, t1), "p99_ms", "rps")
        return {
            "p99_ms": median(r["p99_ms"] for r in recs),
            "rps": median(r["rps"] for r in recs),
            "batch_rate": hog_figures(session.dir / "hog.jsonl", t0, t1)["rate"],
        }
