"""A worker of the verifier's dynamic test (run as a separate process).

    python sandbox_worker.py LOG spin              (a %d in LOG becomes the pid)
    python sandbox_worker.py LOG periodic [REQUEST_FIFO REPLY_FIFO]
    python sandbox_worker.py LOG server REQUEST_FIFO REPLY_FIFO

``spin`` burns CPU in 1 ms steps; ``periodic`` wakes every 2 ms on an
absolute deadline (skipping the deadlines it missed, so it blocks before
every step however late it runs), burns 200 us and, with FIFOs, asks a
server and waits for its answer; ``server`` answers each request after
100 us of work.

Every completed step appends one fixed-size record to LOG (see
:data:`RECORD`): when the step was due or began, when it ended (both
CLOCK_MONOTONIC nanoseconds), the wake-up lateness and the response time in
microseconds (NaN where they do not apply).  The verifier reads the log and
cuts it into its own time windows, so nothing depends on signals reaching a
worker that may be starved of CPU.  The first record, all zeros, says the
worker is set up.  A worker whose parent (the verifier) is gone exits by
itself, within about a second.
"""

from __future__ import annotations

import math
import os
import select
import struct
import sys
import time

PERIOD_NS = 2_000_000
WORK_NS = 200_000
SERVER_WORK_NS = 100_000
# begin_ns, end_ns, wake_us, response_us
RECORD = struct.Struct("<qqdd")
NAN = math.nan

# The verifier that started us (it may pass its pid: a shell in between would hide it).
PARENT = int(os.environ.get("SCHEDCP_SANDBOX_PARENT", os.getppid()))


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _burn(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def _orphaned() -> bool:
    return os.getppid() != PARENT


def _spin(log: int) -> None:
    while not _orphaned():
        begin = _now()
        _burn(1_000_000)
        os.write(log, RECORD.pack(begin, _now(), NAN, NAN))


def _server(log: int, req: int, rep: int) -> None:
    while not _orphaned():
        if not select.select([req], [], [], 1.0)[0]:
            continue
        begin = _now()
        os.read(req, 1)
        _burn(SERVER_WORK_NS)
        os.write(rep, b"r")
        os.write(log, RECORD.pack(begin, _now(), NAN, NAN))


def _periodic(log: int, fifo: tuple[int, int] | None) -> None:
    deadline = _now()
    while not _orphaned():
        deadline += PERIOD_NS
        now = _now()
        if deadline > now:
            time.sleep((deadline - now) / 1e9)
        woke = _now()
        _burn(WORK_NS)
        response = NAN
        if fifo is not None:
            t0 = _now()
            os.write(fifo[0], b"q")
            while not select.select([fifo[1]], [], [], 1.0)[0]:
                if _orphaned():
                    return
            os.read(fifo[1], 1)
            response = (_now() - t0) / 1000
        end = _now()
        os.write(log, RECORD.pack(deadline, end, max(0, woke - deadline) / 1000, response))
        # Periods missed while late are skipped, as cyclictest does: the next
        # deadline is the first one still ahead.  Catching up instead would run
        # the missed steps back to back without blocking, and a waker that
        # never blocks looks like a CPU hog to whoever watches it (the breaker
        # classifies groups by their voluntary context switches).
        deadline += (end - deadline) // PERIOD_NS * PERIOD_NS


def main() -> None:
    """Run the role named on the command line until killed (or orphaned)."""
    log = os.open(sys.argv[1].replace("%d", str(os.getpid())),
                  os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    role = sys.argv[2]
    fifo = None
    if len(sys.argv) > 4:
        fifo = (os.open(sys.argv[3], os.O_RDWR), os.open(sys.argv[4], os.O_RDWR))
    os.write(log, RECORD.pack(0, 0, NAN, NAN))  # set up: the verifier may start measuring
    if role == "spin":
        _spin(log)
    elif role == "server":
        assert fifo is not None, "a server needs its two FIFOs"
        _server(log, *fifo)
    else:
        _periodic(log, fifo)


if __name__ == "__main__":
    main()
