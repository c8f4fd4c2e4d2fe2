"""Workloads the agent tests start: a long-tail job pool and a make -j fork churn.

    python workloads.py pool REPORT SHORT_JOBS SHORT_CPU LONG_CPU WIDTH
    python workloads.py churn DIR SECONDS

``pool`` runs 1 long job (first in the queue) and SHORT_JOBS short ones,
WIDTH at a time, each a forked child spinning for its CPU seconds; REPORT
gets each job's completion time (s since start) as JSON after every job.
``churn`` writes a Makefile of 40 tiny shell targets into DIR and runs
``make -B -j2`` on it again and again for SECONDS of wall time (bounded by
time, not work, so a loaded host cannot make the test run long).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _spin_cpu(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def pool(report: str, shorts: int, short_cpu: float, long_cpu: float, width: int) -> None:
    queue = [("long", long_cpu)] + [("short", short_cpu)] * shorts
    running: dict[int, tuple[str, float]] = {}
    start = time.monotonic()
    done: list[dict[str, object]] = []
    while queue or running:
        while queue and len(running) < width:
            kind, cpu = queue.pop(0)
            pid = os.fork()
            if pid == 0:
                _spin_cpu(cpu)
                os._exit(0)
            running[pid] = (kind, time.monotonic())
        pid, _ = os.wait()
        kind, _started = running.pop(pid)
        done.append({"kind": kind, "pid": pid, "end": round(time.monotonic() - start, 3)})
        with open(report + ".tmp", "w") as f:
            json.dump(done, f)
        os.replace(report + ".tmp", report)


def churn(directory: str, seconds: float) -> None:
    mk = os.path.join(directory, "Makefile")
    targets = " ".join(f"t{i}" for i in range(40))
    with open(mk, "w") as f:
        f.write(f"all: {targets}\n\nt%:\n\t@i=0; while [ $$i -lt 200 ]; do i=$$((i+1)); done\n")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        subprocess.run(["make", "-s", "-B", "-j2", "-f", mk], cwd=directory, check=False)


if __name__ == "__main__":
    if sys.argv[1] == "pool":
        pool(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
             int(sys.argv[6]))
    elif sys.argv[1] == "churn":
        churn(sys.argv[2], float(sys.argv[3]))
