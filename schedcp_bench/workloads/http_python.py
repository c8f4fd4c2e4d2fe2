"""http-python: a Python HTTP service + a seeded load generator beside a CPU hog.

The service is ``python -m schedcp_bench.workloads.http_python --serve PORT
--dir RUN_DIR``: a ``ThreadingHTTPServer`` (one thread per connection) whose
``GET /work?n=K`` answers after K rounds of SHA-256 over 4 KiB (a request
handler with some CPU work, like a small web application).  The driver loops
``python -m schedcp_bench.loadgen http`` (4 keep-alive connections, 200
requests, K drawn from the seed); a ``t1_hog`` with one spinning thread per
CPU is the batch load.  Figures: p50/p99 request latency, requests per second,
the hog's rate.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import free_port, python_argv, python_env
from schedcp_bench.workloads.service import Service, ServiceBesideHog

REQUESTS = 200
CONNS = 4
BLOCK = b"\x5a" * 4096
MAX_WORK = 1000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != "/work":
            self.send_error(404)
            return
        try:
            n = int(parse_qs(url.query).get("n", ["1"])[0])
        except ValueError:
            self.send_error(400, "n must be an integer")
            return
        digest = b""
        for _ in range(max(1, min(n, MAX_WORK))):
            digest = hashlib.sha256(digest + BLOCK).digest()
        body = digest.hex().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log: the measured path writes nothing."""


def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until killed."""
    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer(("127.0.0.1", port), _Handler) as server:
        server.serve_forever()


class HttpPython(ServiceBesideHog):
    """A Python HTTP service under a seeded closed-loop load, beside a CPU hog."""

    name = "http-python"
    description = ("Python ThreadingHTTPServer (hashing per request) + seeded closed-loop "
                   "load generator, beside a CPU hog with one thread per CPU")
    packages = ("python3", "gcc", "libc6-dev")
    commands = ("cc",)
    natives = ("t1hog",)
    goal = "latency"
    quick = False
    warmup = 1.0
    figures = {"p99_ms": ("p99_us", 1e-3), "p50_ms": ("p50_us", 1e-3), "rps": ("rps", 1.0)}
    metrics = (
        Metric("p99_ms", "ms", "lower", 1.0, "request latency p99 (median of runs)"),
        Metric("p50_ms", "ms", "lower", 0.5, "request latency p50 (median of runs)"),
        Metric("rps", "req/s", "higher", 1.0, "requests per second"),
        Metric("batch_rate", "M iter/s", "higher", 0.5, "batch load (hog) throughput"),
    )
    slos = (
        SLO("p99_ms", "<=", 1000.0, hard=True),
        SLO("rps", ">=", 20.0, hard=True),
        SLO("p99_ms", "<=", 54.0, hard=False),
    )

    def serve(self, session: Session, seed: int) -> Service:
        """This module's HTTP service on a free loopback port."""
        port = free_port()
        server = session.spawn(python_argv("schedcp_bench.workloads.http_python", "--serve",
                                           str(port), "--dir", str(session.dir)),
                               env=python_env())
        return Service(server, "http-python service", ("127.0.0.1", port), {"port": port})

    def driver(self, session: Session, service: Service, seed: int) -> tuple[list[str], str]:
        """The seeded HTTP load generator."""
        return (python_argv("schedcp_bench.loadgen", "http", f"127.0.0.1:{service.extra['port']}",
                            "--requests", str(REQUESTS), "--conns", str(CONNS),
                            "--seed", str(seed), "--tag", str(session.dir)),
                "schedcp_bench.loadgen:parse")


def main(argv: list[str] | None = None) -> int:
    """``--serve PORT --dir RUN_DIR``: run the service."""
    ap = argparse.ArgumentParser(prog="schedcp_bench.workloads.http_python")
    ap.add_argument("--serve", type=int, required=True, metavar="PORT")
    ap.add_argument("--dir", help="the run directory (names the session on the command line)")
    serve(ap.parse_args(argv).serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
