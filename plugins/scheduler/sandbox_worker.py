"""A worker of the verifier's dynamic test (run as a separate process).

    python sandbox_worker.py REPORT_PATTERN spin
    python sandbox_worker.py REPORT_PATTERN periodic [REQUEST_FIFO REPLY_FIFO]
    python sandbox_worker.py REPORT_PATTERN server REQUEST_FIFO REPLY_FIFO

``spin`` burns CPU; ``periodic`` wakes every 2 ms on an absolute deadline,
records its wake-up latency, burns 200 us, and, with FIFOs, asks a server and
records the response time; ``server`` answers each request after 100 us of
work.  SIGUSR1 resets the counters; SIGUSR2 writes ``REPORT_PATTERN % pid``
+ ``.json`` with iterations and p50/p99 latencies (microseconds).  A worker
whose parent (the verifier) is gone exits by itself, within about a second.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

PERIOD_NS = 2_000_000
WORK_NS = 200_000
SERVER_WORK_NS = 100_000

state: dict[str, list[float] | int] = {"iterations": 0, "wake": [], "response": []}


def _burn(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _reset(*_: object) -> None:
    state["iterations"] = 0
    state["wake"] = []
    state["response"] = []


def _report(*_: object) -> None:
    wake = state["wake"]
    response = state["response"]
    assert isinstance(wake, list) and isinstance(response, list)
    out = {
        "iterations": state["iterations"],
        "wake_p50_us": _pct(wake, 0.5),
        "wake_p99_us": _pct(wake, 0.99),
        "response_p50_us": _pct(response, 0.5),
        "response_p99_us": _pct(response, 0.99),
    }
    path = sys.argv[1].replace("%d", str(os.getpid())) + ".json"
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)


def _count() -> None:
    n = state["iterations"]
    assert isinstance(n, int)
    state["iterations"] = n + 1


# The verifier that started us (it may pass its pid: a shell in between would hide it).
PARENT = int(os.environ.get("SCHEDCP_SANDBOX_PARENT", os.getppid()))


def _orphaned() -> bool:
    return os.getppid() != PARENT


def main() -> None:
    """Run the role named on the command line until killed (or orphaned)."""
    signal.signal(signal.SIGUSR1, _reset)
    signal.signal(signal.SIGUSR2, _report)
    role = sys.argv[2]
    if role == "spin":
        while not _orphaned():
            _burn(1_000_000)
            _count()
        return
    if role == "server":
        req = os.open(sys.argv[3], os.O_RDWR)
        rep = os.open(sys.argv[4], os.O_RDWR)
        while not _orphaned():
            if not select.select([req], [], [], 1.0)[0]:
                continue
            os.read(req, 1)
            _burn(SERVER_WORK_NS)
            os.write(rep, b"r")
            _count()
        return
    fifo = None
    if len(sys.argv) > 4:
        fifo = (os.open(sys.argv[3], os.O_RDWR), os.open(sys.argv[4], os.O_RDWR))
    deadline = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    while not _orphaned():
        deadline += PERIOD_NS
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if deadline > now:
            time.sleep((deadline - now) / 1e9)
        woke = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        wake = state["wake"]
        assert isinstance(wake, list)
        wake.append(max(0, woke - deadline) / 1000)
        _burn(WORK_NS)
        if fifo is not None:
            t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            os.write(fifo[0], b"q")
            while not select.select([fifo[1]], [], [], 1.0)[0]:
                if _orphaned():
                    return
            os.read(fifo[1], 1)
            response = state["response"]
            assert isinstance(response, list)
            response.append((time.clock_gettime_ns(time.CLOCK_MONOTONIC) - t0) / 1000)
        _count()
        if woke - deadline > 50 * PERIOD_NS:
            deadline = woke  # fell far behind: do not try to catch up in a burst


if __name__ == "__main__":
    main()
