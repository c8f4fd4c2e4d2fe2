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
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import tool
from schedcp_bench.workloads.service import Service, ServiceBesideHog

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


class RedisBench(ServiceBesideHog):
    """redis-server + redis-benchmark beside a CPU hog."""

    name = "redis"
    description = ("redis-server (unix socket, no persistence) + redis-benchmark get/set "
                   "beside a CPU hog with one thread per CPU")
    packages = ("redis-server", "redis-tools", "gcc", "libc6-dev")
    commands = ("redis-server", "redis-benchmark", "cc")
    natives = ("t1hog",)
    goal = "latency"
    warmup = 1.0
    figures = {"p99_ms": ("p99_ms", 1.0), "rps": ("rps", 1.0)}
    metrics = (
        Metric("p99_ms", "ms", "lower", 1.0, "redis-benchmark p99 latency (worse of GET/SET)"),
        Metric("rps", "req/s", "higher", 1.0, "redis-benchmark requests per second"),
        Metric("batch_rate", "M iter/s", "higher", 0.5, "batch load (hog) throughput"),
    )
    slos = (
        SLO("p99_ms", "<=", 50.0, hard=True),
        SLO("rps", ">=", 2000.0, hard=True),
        SLO("p99_ms", "<=", 4.1, hard=False),
        SLO("rps", ">=", 45000.0, hard=False),
    )

    def serve(self, session: Session, seed: int) -> Service:
        """redis-server with its own config on a private unix socket."""
        sock = session.dir / "redis.sock"
        conf = session.dir / "redis.conf"
        conf.write_text(CONFIG.format(sock=sock, dir=session.dir))
        server = session.spawn([tool(session.dir, "redis-server"), str(conf)])
        return Service(server, "redis-server", str(sock), {"socket": str(sock)})

    def driver(self, session: Session, service: Service, seed: int) -> tuple[list[str], str]:
        """redis-benchmark get/set (it takes no seed)."""
        return ([tool(session.dir, "redis-benchmark"), "-s", service.extra["socket"],
                 "-n", str(REQUESTS), "-c", "8", "-t", "get,set", "-r", "10000", "--csv",
                 "--precision", "3"], f"{__name__}:parse")
