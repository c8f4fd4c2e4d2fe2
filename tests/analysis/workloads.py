"""Real workloads the analysis tests start as child processes.

Run as ``python workloads.py <kind> [args]``; kinds: ``waker`` (2 ms sleep,
0.2 ms work), ``named`` (sleep/work loop under a given comm name, for summary
size tests).  The I/O-bound workload is a real ``dd`` (see conftest.Argv.dd).
"""

from __future__ import annotations

import ctypes
import sys
import time


def _spin(seconds: float) -> None:
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


def waker() -> None:
    while True:
        _spin(0.0002)
        time.sleep(0.002)


def named(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    while True:
        _spin(0.001)
        time.sleep(0.02)


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "waker":
        waker()
    elif kind == "named":
        named(sys.argv[2])
    else:
        raise SystemExit(f"unknown workload {kind}")
