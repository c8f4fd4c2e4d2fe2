"""Fixtures of the multi-subsystem tests: the io tests' loop devices, a real target process.

Only loop devices made here are written (never vda); only processes
started here are changed.  Each fixture removes what it made.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from plugins.io import ioprio
from plugins.io.sandbox import ScratchDevice, stop
from tests.harness import wait_until
from tests.io.conftest import loopdev

__all__ = ["loopdev"]


@pytest.fixture
def writer(loopdev: ScratchDevice) -> Iterator[subprocess.Popen[bytes]]:
    """A real fio writer on the loop device (its job process is forked: both are targets)."""
    proc = subprocess.Popen(
        ["fio", "--name=bulk", f"--filename={loopdev.path}", "--rw=write", "--bs=1M",
         "--direct=1", "--ioengine=libaio", "--iodepth=4", "--time_based=1",
         "--runtime=300", "--rate=8m"], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(ioprio.Selector([], [proc.pid]).scan()) > 1, what="fio job")
        yield proc
    finally:
        stop(proc)


def threads(pids: list[int]) -> list[int]:
    """Every thread of ``pids`` (what the scheduler part's nice is set on)."""
    return [tid for pid in pids for tid in ioprio.threads(pid)]


def nice_of(tids: list[int]) -> dict[int, int]:
    """Each thread's nice, read from the kernel."""
    return {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids}


def ioprio_of(tids: list[int]) -> dict[int, int | None]:
    """Each thread's raw I/O priority, read from the kernel."""
    return {t: ioprio.get(t) for t in tids}
