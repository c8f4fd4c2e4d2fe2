"""long-tail: a batch set of 39 short jobs and 1 long job (makespan, average completion).

One unit is one set: ``python -m schedcp_bench.workloads.longtail`` starts
all 40 ``spinjob`` processes at once (in an order shuffled by the seed), each
spinning a fixed amount of its own CPU time (shorts 15 ms +-30 % by the seed,
the long job 600 ms), waits for them and prints the set's makespan and the
average completion time (from the set's start).  The jobs carry
``--job-class short|long`` on their command lines, which the built-in
long-job-first policy matches.  On 2 CPUs a set takes about a second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, python_argv

SHORT_JOBS = 39
SHORT_MS = 15.0
LONG_MS = 600.0


def job_set(seed: int, shorts: int = SHORT_JOBS, short_ms: float = SHORT_MS,
            long_ms: float = LONG_MS) -> list[tuple[str, float]]:
    """The set's jobs as (class, CPU ms), in start order; the same for the same seed."""
    rng = random.Random(seed)
    jobs = [("short", round(short_ms * rng.uniform(0.7, 1.3), 2)) for _ in range(shorts)]
    jobs.append(("long", long_ms))
    rng.shuffle(jobs)
    return jobs


def run_set(spinjob: str, tag: str, jobs: list[tuple[str, float]]) -> dict[str, Any]:
    """Start every job at once, wait for all; the set's completion figures (s)."""
    start = time.monotonic()
    procs: dict[int, str] = {}
    for cls, ms in jobs:
        # posix_spawn, not Popen: fast, and no Popen bookkeeping reaps our children
        argv = [spinjob, "--job-class", cls, "--cpu-ms", f"{ms:g}", "--tag", tag]
        procs[os.posix_spawn(spinjob, argv, os.environ)] = cls
    done: dict[int, float] = {}
    failed = 0
    while len(done) < len(procs):
        pid, status = os.wait()
        if pid in procs:
            done[pid] = time.monotonic() - start
            failed += os.waitstatus_to_exitcode(status) != 0
    if failed:
        raise SystemExit(f"{failed} jobs failed")
    times = list(done.values())
    return {
        "makespan_s": max(times),
        "avg_completion_s": sum(times) / len(times),
        "long_s": next(t for pid, t in done.items() if procs[pid] == "long"),
        "short_avg_s": sum(t for pid, t in done.items() if procs[pid] == "short")
        / max(1, sum(1 for c in procs.values() if c == "short")),
        "jobs": len(times),
    }


def parse(stdout: str, _stderr: str) -> dict[str, Any]:
    """The JSON line the set runner prints."""
    out: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return out


class LongTail(BenchWorkload):
    """39 short + 1 long CPU-bound job per set, looped."""

    name = "long-tail"
    description = (f"{SHORT_JOBS} short ({SHORT_MS:g} ms CPU) + 1 long ({LONG_MS:g} ms CPU) "
                   "spinjob processes started at once, looped")
    packages = ("gcc", "libc6-dev")
    commands = ("cc",)
    natives = ("spinjob",)
    goal = "makespan"
    warmup = 0.5
    metrics = (
        Metric("makespan_s", "s", "lower", 1.0, "time until the last job of a set ended"),
        Metric("avg_completion_s", "s", "lower", 1.0, "mean job completion time in a set"),
    )
    slos = (
        SLO("makespan_s", "<=", 5.0, hard=True),
        SLO("makespan_s", "<=", 1.0, hard=False),
        SLO("avg_completion_s", "<=", 0.31, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the driver looping the set runner."""
        session = self.new_session(run_dir)
        argv = python_argv(__name__, "--spinjob", self.binary("spinjob"),
                           "--tag", str(session.dir), "--seed", str(seed))
        driver = self.spawn_driver(session, argv, f"{__name__}:parse")
        # long/short are jobs of a set, born and gone within a second: policies find
        # them by their command lines (this session's tag only); the driver is
        # their ancestor.
        session.roles = {"batch": [driver.pid]}
        tag = re.escape(str(session.dir))
        session.role_match = {
            cls: {"cmdline": f"--job-class {cls} --cpu-ms \\S+ --tag {tag}$"}
            for cls in ("long", "short")}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median makespan and average completion of the sets inside the window."""
        recs = good(session.records(t0, t1), "makespan_s", "avg_completion_s")
        return {"makespan_s": median(r["makespan_s"] for r in recs),
                "avg_completion_s": median(r["avg_completion_s"] for r in recs)}


def main(argv: list[str] | None = None) -> int:
    """Run one job set and print its figures as JSON."""
    ap = argparse.ArgumentParser(description="run one long-tail job set")
    ap.add_argument("--spinjob", required=True, help="the compiled spinjob program")
    ap.add_argument("--tag", default="", help="a label put on every job's command line")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shorts", type=int, default=SHORT_JOBS)
    ap.add_argument("--short-ms", type=float, default=SHORT_MS)
    ap.add_argument("--long-ms", type=float, default=LONG_MS)
    args = ap.parse_args(argv)
    jobs = job_set(args.seed, args.shorts, args.short_ms, args.long_ms)
    print(json.dumps(run_set(args.spinjob, args.tag, jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
