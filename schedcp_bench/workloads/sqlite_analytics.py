"""sqlite-analytics: SQLite analytic queries beside an interactive probe.

``start`` generates a SQLite database from the seed (``ROWS`` sales rows over
stores and products; the same file content for the same seed) in the run
directory.  The driver loops ``python -m schedcp_bench.workloads.sqlite_analytics
--run``: one stream per CPU (forked processes), each on its own read-only connection, runs the
fixed query set REPEAT (2) times (joins with group-by, a window function, count distinct, a
top-N sort, an above-average filter); the unit's figure is the wall time until
every stream finished.  Beside it an interactive ``t1_probe`` (one thread,
100 us of work every 5 ms) stands for a user's foreground task.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    good,
    median,
    ncpu,
    probe_figures,
    probe_histogram,
    python_argv,
)

ROWS = 60000
STORES = 50
PRODUCTS = 400
DAYS = 365
#: passes over the query set per stream in one unit
REPEAT = 2
QUERIES = (
    """SELECT st.region, p.category, SUM(s.qty * s.price) AS revenue
       FROM sales s JOIN stores st ON st.id = s.store JOIN products p ON p.id = s.product
       GROUP BY st.region, p.category ORDER BY revenue DESC""",
    """WITH d AS (SELECT day, SUM(qty * price) AS v FROM sales GROUP BY day)
       SELECT day, AVG(v) OVER (ORDER BY day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW)
       FROM d ORDER BY day""",
    """SELECT product, COUNT(DISTINCT store) AS n FROM sales GROUP BY product
       ORDER BY n DESC, product LIMIT 20""",
    """SELECT store, day, qty * price AS v FROM sales ORDER BY v DESC, store, day LIMIT 100""",
    """SELECT p.category, COUNT(*) FROM
         (SELECT product, price, AVG(price) OVER (PARTITION BY product) AS avg_price
          FROM sales) s JOIN products p ON p.id = s.product
       WHERE s.price > s.avg_price GROUP BY p.category ORDER BY p.category""",
)


def generate(db: Path, seed: int, rows: int = ROWS) -> None:
    """Create the database for ``seed`` at ``db`` (replacing it)."""
    rng = random.Random(seed)
    db.unlink(missing_ok=True)
    tmp = db.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
            CREATE TABLE stores (id INTEGER PRIMARY KEY, region TEXT);
            CREATE TABLE products (id INTEGER PRIMARY KEY, category TEXT, name TEXT);
            CREATE TABLE sales (id INTEGER PRIMARY KEY, day INTEGER, store INTEGER,
                                product INTEGER, qty INTEGER, price REAL);
        """)
        regions = ["north", "south", "east", "west", "central"]
        con.executemany("INSERT INTO stores VALUES (?, ?)",
                        [(i, rng.choice(regions)) for i in range(STORES)])
        con.executemany("INSERT INTO products VALUES (?, ?, ?)",
                        [(i, f"cat{rng.randrange(12)}", f"product {i}")
                         for i in range(PRODUCTS)])
        con.executemany(
            "INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?)",
            [(i, rng.randrange(DAYS), rng.randrange(STORES), int(rng.paretovariate(1.2)) % PRODUCTS,
              rng.randint(1, 20), round(rng.uniform(0.5, 200.0), 2)) for i in range(rows)])
        con.commit()
    finally:
        con.close()
    tmp.replace(db)


def _stream(db: Path, repeat: int) -> int:
    """One stream: the query set ``repeat`` times on a read-only connection; rows returned."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return sum(len(con.execute(query).fetchall())
                   for _ in range(repeat) for query in QUERIES)
    finally:
        con.close()


def run_queries(db: Path, streams: int, repeat: int = REPEAT) -> dict[str, Any]:
    """Run the query set ``repeat`` times in ``streams`` forked processes at once.

    Processes, not threads, so the streams run in parallel whatever the GIL
    does; the children keep this command line.  Returns the wall time and the
    row count of one stream (a checksum of the work).
    """
    start = time.monotonic()
    pids = []
    for _ in range(streams - 1):
        pid = os.fork()
        if pid == 0:  # a child stream
            code = 1
            try:
                _stream(db, repeat)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    rows = _stream(db, repeat)
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in pids)
    elapsed = time.monotonic() - start
    if failed:
        raise RuntimeError(f"{failed} query streams failed")
    return {"query_s": elapsed, "streams": streams, "repeat": repeat, "rows": rows}


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """The JSON line the query runner prints."""
    out: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return out


class SqliteAnalytics(BenchWorkload):
    """SQLite analytic query streams beside an interactive probe."""

    name = "sqlite-analytics"
    description = (f"one SQLite analytic query stream per CPU over a generated {ROWS}-row "
                   "database, beside an interactive probe (100 us every 5 ms)")
    packages = ("gcc", "libc6-dev")
    commands = ("cc",)
    natives = ("t1probe",)
    goal = "latency"
    warmup = 1.0
    metrics = (
        Metric("query_s", "s", "lower", 1.0, "wall time of one query set on every stream"),
        Metric("probe_wake_p99_us", "us", "lower", 1.0,
               "interactive probe wake-up latency, 99th percentile"),
        Metric("probe_missed_pct", "%", "lower", 0.0, "probe periods missed (reported)"),
    )
    slos = (
        SLO("query_s", "<=", 10.0, hard=True),
        SLO("probe_wake_p99_us", "<=", 50000.0, hard=True),
        SLO("probe_wake_p99_us", "<=", 3300.0, hard=False),
        SLO("query_s", "<=", 0.54, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Generate the database, start the probe and the query driver."""
        session = self.new_session(run_dir)
        db = session.dir / "analytics.db"
        generate(db, seed)
        probe = self.spawn_probe(session, 5000, 100, 1)
        argv = python_argv(__name__, "--run", "--db", str(db), "--streams", str(ncpu()))
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        session.roles = {"latency": [probe.pid], "foreground": [probe.pid],
                         "batch": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median query-set time and the probe's percentiles over the window."""
        recs = good(session.records(t0, t1), "query_s")
        probe = probe_figures(session.dir / "probe.jsonl", t0, t1)
        return {"query_s": median(r["query_s"] for r in recs),
                "probe_wake_p99_us": probe["wake_p99_us"],
                "probe_missed_pct": probe["missed_pct"]}


def main(argv: list[str] | None = None) -> int:
    """Generate a database (--generate) or run the query set once (--run)."""
    ap = argparse.ArgumentParser(description="SQLite analytics workload")
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=REPEAT)
    args = ap.parse_args(argv)
    if args.generate:
        generate(args.db, args.seed, args.rows)
    if args.run:
        if not args.db.exists():
            ap.error(f"no database {args.db}")
        print(json.dumps(run_queries(args.db, args.streams, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

    def distribution(self, session: Session, t0: float,
                     t1: float) -> dict[str, list[tuple[float, int]]]:
        """The probe's wake-up latency histogram (us) over the window."""
        return {"probe wake-up latency (us)": probe_histogram(session.dir / "probe.jsonl", t0, t1)}
