"""nginx + wrk beside a CPU-bound batch load.

nginx runs with its own minimal config in the run directory (pid, logs and
temp paths there, no system config, not a service), in single-process mode
(``master_process off``) so its one process keeps its command line — with a
master/worker pair the worker retitles itself "nginx: worker process" and no
per-session regex could find it.  It serves a seeded 16 KiB static page on a
free loopback port.  The driver loops ``wrk -t1 -c8 -d1s --latency``; a
``t1_hog`` with one spinning thread per CPU is the batch load.
"""

from __future__ import annotations

import random
import re
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import free_port, tool
from schedcp_bench.workloads.service import Service, ServiceBesideHog

CONFIG = """\
# schedcp-bench nginx workload: one process, everything under the run directory
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
    }}
}}
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_P99 = re.compile(r"^\s*99%\s+([0-9.]+)(us|ms|s)\s*$", re.MULTILINE)
_P50 = re.compile(r"^\s*50%\s+([0-9.]+)(us|ms|s)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s*([0-9.]+)", re.MULTILINE)
_BAD = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """wrk --latency output: p50/p99 (ms), requests/s, non-2xx responses."""
    p99, p50, rps = _P99.search(stdout), _P50.search(stdout), _RPS.search(stdout)
    if not p99 or not p50 or not rps:
        raise ValueError("no latency distribution or Requests/sec in wrk output")
    bad = _BAD.search(stdout)
    if bad and int(bad.group(1)):
        raise ValueError(f"{bad.group(1)} non-2xx responses")
    return {"p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
            "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
            "rps": float(rps.group(1))}


class NginxWrk(ServiceBesideHog):
    """nginx + wrk beside a CPU hog."""

    name = "nginx"
    description = ("nginx (own config, one process) serving a static page to wrk -t1 -c8 "
                   "beside a CPU hog with one thread per CPU")
    packages = ("nginx-light", "wrk", "gcc", "libc6-dev")
    commands = ("nginx", "wrk", "cc")
    natives = ("t1hog",)
    goal = "latency"
    warmup = 1.0
    figures = {"p99_ms": ("p99_ms", 1.0), "rps": ("rps", 1.0)}
    metrics = (
        Metric("p99_ms", "ms", "lower", 1.0, "wrk p99 request latency"),
        Metric("rps", "req/s", "higher", 1.0, "wrk requests per second"),
        Metric("batch_rate", "M iter/s", "higher", 0.5, "batch load (hog) throughput"),
    )
    slos = (
        SLO("p99_ms", "<=", 100.0, hard=True),
        SLO("rps", ">=", 1000.0, hard=True),
        SLO("p99_ms", "<=", 4.9, hard=False),
        SLO("rps", ">=", 22000.0, hard=False),
    )

    def serve(self, session: Session, seed: int) -> Service:
        """nginx with its own config and a page drawn from the seed, on a free port."""
        for sub in ("www", "tmp"):
            (session.dir / sub).mkdir(exist_ok=True)
        rng = random.Random(seed)
        page = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz \n") for _ in range(16384))
        (session.dir / "www" / "index.html").write_text(page)
        port = free_port()
        conf = session.dir / "nginx.conf"
        conf.write_text(CONFIG.format(dir=session.dir, port=port))
        server = session.spawn([tool(session.dir, "nginx"), "-p", f"{session.dir}/",
                                "-c", str(conf), "-e", str(session.dir / "nginx-error.log")])
        url = f"http://127.0.0.1:{port}/index.html"
        return Service(server, "nginx", ("127.0.0.1", port), {"url": url})

    def driver(self, session: Session, service: Service, seed: int) -> tuple[list[str], str]:
        """wrk, one thread, 8 connections, one second per run."""
        return ([tool(session.dir, "wrk"), "-t1", "-c8", "-d1s", "--latency",
                 service.extra["url"]], f"{__name__}:parse")
