"""A seeded closed-loop load generator for the service workloads: one unit per run.

    python -m schedcp_bench.loadgen memcached HOST:PORT --requests N --conns C --seed S
    python -m schedcp_bench.loadgen http HOST:PORT --requests N --conns C --seed S

``C`` connections (one thread each) send ``N`` requests in all, each waiting
for its answer before the next (closed loop), and the run prints one JSON
object: ``{"requests", "errors", "seconds", "rps", "p50_us", "p99_us"}``.
The request sequence comes from ``random.Random(seed + connection)``:

- memcached (text protocol): 90 % ``get`` / 10 % ``set`` of 100-byte values
  over ``KEYS`` keys (the keys are set once first, outside the timing);
- http: ``GET /work?n=K`` with ``K`` drawn from 1..``HTTP_MAX_WORK``
  (the service does K rounds of hashing), on a keep-alive connection.

The same seed gives the same request sequence; the timings are the machine's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import socket
import sys
import threading
import time
from collections.abc import Callable

KEYS = 1000
VALUE = b"v" * 100
HTTP_MAX_WORK = 40


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class _Memcached:
    """One memcached text-protocol connection."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def set(self, key: str) -> None:
        self.sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(VALUE), VALUE))
        if self.file.readline() != b"STORED\r\n":
            raise RuntimeError("memcached: set not stored")

    def get(self, key: str) -> None:
        self.sock.sendall(b"get %s\r\n" % key.encode())
        while self.file.readline() not in (b"END\r\n", b""):
            pass

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _memcached_worker(host: str, port: int, n: int, rng: random.Random,
                      out: list[float]) -> None:
    conn = _Memcached(host, port)
    try:
        for _ in range(n):
            key = f"k{rng.randrange(KEYS)}"
            op = conn.set if rng.random() < 0.1 else conn.get
            t = time.perf_counter()
            op(key)
            out.append(time.perf_counter() - t)
    finally:
        conn.close()


def _http_worker(host: str, port: int, n: int, rng: random.Random, out: list[float]) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("GET", f"/work?n={rng.randint(1, HTTP_MAX_WORK)}")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"http: status {resp.status}")
            out.append(time.perf_counter() - t)
    finally:
        conn.close()


Worker = Callable[[str, int, int, random.Random, list[float]], None]
WORKERS: dict[str, Worker] = {"memcached": _memcached_worker, "http": _http_worker}


def run(kind: str, host: str, port: int, requests: int, conns: int,
        seed: int) -> dict[str, float | int | str | None]:
    """One closed-loop run; the figures of the JSON line."""
    if kind == "memcached":  # every key exists: gets hit, like a warm cache
        warm = _Memcached(host, port)
        try:
            for k in range(KEYS):
                warm.set(f"k{k}")
        finally:
            warm.close()
    lat: list[list[float]] = [[] for _ in range(conns)]
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            WORKERS[kind](host, port, requests // conns + (i < requests % conns),
                          random.Random(seed * 1000 + i), lat[i])
        except (OSError, RuntimeError) as err:
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(conns)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    ordered = sorted(x for part in lat for x in part)
    p50, p99 = _percentile(ordered, 50), _percentile(ordered, 99)
    out: dict[str, float | int | str | None] = {
        "requests": len(ordered), "errors": len(errors), "seconds": seconds,
        "rps": len(ordered) / seconds if seconds > 0 else None,
        "p50_us": None if p50 is None else p50 * 1e6,
        "p99_us": None if p99 is None else p99 * 1e6}
    if errors:  # the driver counts a record with "error" as a failed run
        out["first_error"] = errors[0]
    return out


def parse(stdout: str, _stderr: str) -> dict[str, float | int | str | None]:
    """The driver's parser: the JSON line, rejected when a request failed."""
    rec: dict[str, float | int | str | None] = json.loads(stdout.strip().splitlines()[-1])
    if rec.get("errors"):
        raise ValueError(f"{rec['errors']} connections failed: {rec.get('first_error')}")
    return rec


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run once, print the JSON line."""
    ap = argparse.ArgumentParser(prog="schedcp_bench.loadgen")
    ap.add_argument("kind", choices=sorted(WORKERS))
    ap.add_argument("address", help="HOST:PORT")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tag", default="", help="ignored: names the run on the command line")
    args = ap.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        ap.error(f"address {args.address!r}: expected HOST:PORT")
    if args.requests < 1 or args.conns < 1:
        ap.error("--requests and --conns must be >= 1")
    print(json.dumps(run(args.kind, host, int(port), args.requests, args.conns, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
