"""sqlite-oltp: short SQLite write transactions from several clients beside a CPU hog.

``start`` creates ``bank.db`` (``ACCOUNTS`` accounts with seeded balances,
WAL journal) in the run directory.  The driver loops ``python -m
schedcp_bench.workloads.sqlite_oltp --run DB``: ``2 x NCPU`` client
processes each run ``TX`` transactions of a pgbench-like shape (``BEGIN
IMMEDIATE``; move an amount between two accounts; insert a history row;
``COMMIT``, ``synchronous=NORMAL``), the accounts and amounts drawn from
``random.Random(seed + client)``.  Writers serialise on SQLite's write lock,
so a preempted lock holder stalls every client; a ``t1_hog`` with one
spinning thread per CPU is the neighbour that preempts it.  Figures:
transactions per second, transaction latency p99, the hog's rate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    good,
    hog_figures,
    median,
    ncpu,
    python_argv,
)

ACCOUNTS = 10000
TX = 150


def generate(db: Path, seed: int, accounts: int = ACCOUNTS) -> None:
    """Create the accounts database for ``seed`` at ``db`` (replacing it)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    rng = random.Random(seed)
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        con.execute("CREATE TABLE history (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, "
                    "amount INTEGER, t REAL)")
        con.executemany("INSERT INTO accounts VALUES (?, ?)",
                        ((i, rng.randint(0, 100000)) for i in range(accounts)))
        con.commit()
    finally:
        con.close()


def client(db: str, seed: int, tx: int) -> list[float]:
    """One client's transactions; their latencies (s)."""
    rng = random.Random(seed)
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    con.execute("PRAGMA synchronous=NORMAL")
    lat = []
    try:
        for _ in range(tx):
            src, dst = rng.randrange(ACCOUNTS), rng.randrange(ACCOUNTS)
            amount = rng.randint(1, 500)
            t = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
            con.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))
            con.execute("INSERT INTO history (src, dst, amount, t) VALUES (?, ?, ?, ?)",
                        (src, dst, amount, t))
            con.execute("COMMIT")
            lat.append(time.perf_counter() - t)
    finally:
        con.close()
    return lat


def run(db: str, seed: int, clients: int, tx: int) -> dict[str, float | int]:
    """Fork ``clients`` processes; collect their latencies through pipes."""
    t0 = time.perf_counter()
    children = []
    for c in range(clients):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the client: write its latencies, exit without cleanup handlers
            os.close(r)
            code = 0
            try:
                data = json.dumps(client(db, seed * 1000 + c, tx)).encode()
                with os.fdopen(w, "wb") as out:
                    out.write(data)
            except BaseException:  # any failure is the child's exit code
                code = 1
            os._exit(code)
        os.close(w)
        children.append((pid, r))
    lat: list[float] = []
    failed = 0
    for pid, r in children:
        with os.fdopen(r, "rb") as inp:
            data = inp.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not data:
            failed += 1
            continue
        lat += json.loads(data)
    seconds = time.perf_counter() - t0
    if failed:
        raise RuntimeError(f"{failed} of {clients} clients failed")
    lat.sort()
    p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
    return {"tx": len(lat), "seconds": seconds, "tps": len(lat) / seconds,
            "p99_ms": p99 * 1000.0, "p50_ms": lat[len(lat) // 2] * 1000.0}


class SqliteOltp(BenchWorkload):
    """2 x NCPU SQLite write clients per unit, looped, beside a CPU hog."""

    name = "sqlite-oltp"
    description = (f"SQLite WAL database: 2 x NCPU clients x {TX} transfer transactions "
                   "(BEGIN IMMEDIATE .. COMMIT) per unit, looped, beside a CPU hog")
    packages = ("python3", "gcc", "libc6-dev")
    commands = ("cc",)
    natives = ("t1hog",)
    goal = "throughput"
    quick = False
    warmup = 0.5
    metrics = (
        Metric("tps", "tx/s", "higher", 1.0, "transactions per second (median of units)"),
        Metric("p99_ms", "ms", "lower", 1.0, "transaction latency p99 (median of units)"),
        Metric("batch_rate", "M iter/s", "higher", 0.5, "the hog's throughput"),
    )
    slos = (
        SLO("tps", ">=", 50.0, hard=True),
        SLO("p99_ms", "<=", 1000.0, hard=True),
        SLO("p99_ms", "<=", 6.2, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Create the database for ``seed``; start the hog and the unit driver."""
        session = self.new_session(run_dir)
        db = session.dir / "bank.db"
        generate(db, seed)
        hog = self.spawn_hog(session, ncpu())
        argv = python_argv("schedcp_bench.workloads.sqlite_oltp", "--run", str(db),
                           "--seed", str(seed), "--clients", str(2 * ncpu()), "--tx", str(TX))
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"latency": [driver.pid], "batch": [hog.pid], "noisy": [hog.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median unit figures and the hog's rate over the window."""
        recs = good(session.records(t0, t1), "tps", "p99_ms")
        return {
            "tps": median(r["tps"] for r in recs),
            "p99_ms": median(r["p99_ms"] for r in recs),
            "batch_rate": hog_figures(session.dir / "hog.jsonl", t0, t1)["rate"],
        }


def parse(stdout: str, _stderr: str) -> dict[str, float]:
    """The driver's parser: the unit's JSON line."""
    rec: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    return rec


def main(argv: list[str] | None = None) -> int:
    """``--run DB --seed S --clients N --tx T``: one unit, its JSON line on stdout."""
    ap = argparse.ArgumentParser(prog="schedcp_bench.workloads.sqlite_oltp")
    ap.add_argument("--run", required=True, metavar="DB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--tx", type=int, default=TX)
    args = ap.parse_args(argv)
    if not Path(args.run).is_file():
        ap.error(f"{args.run}: no such database")
    print(json.dumps(run(args.run, args.seed, args.clients, args.tx)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
