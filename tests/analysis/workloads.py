"""Real workloads the analysis tests start as child processes.

Run as ``python workloads.py <kind> [args]``; kinds: ``waker`` (2 ms sleep,
0.2 ms work), ``io`` (4 KiB O_DIRECT|O_DSYNC writes over a 1 MiB file),
``named`` (sleep/work loop under a given comm name, for summary size tests).
"""

from __future__ import annotations

import ctypes
import mmap
import os
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


def io(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT | os.O_DSYNC, 0o600)
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT wants
    buf.write(b"x" * 4096)
    i = 0
    while True:
        os.pwrite(fd, buf, (i % 256) * 4096)
        i += 1


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
    elif kind == "io":
        io(sys.argv[2])
    elif kind == "named":
        named(sys.argv[2])
    else:
        raise SystemExit(f"unknown workload {kind}")
