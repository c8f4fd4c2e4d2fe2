"""Fixtures of the multi-subsystem tests: the io tests' loop devices, a real target process.

Only loop devices made here are written (never vda); only processes
started here are changed.  Each fixture removes what it made.
"""

from __future__ import annotations

import os

from plugins.io import ioprio
from tests.io.conftest import loopdev, writer

__all__ = ["loopdev", "writer"]


def threads(pids: list[int]) -> list[int]:
    """Every thread of ``pids`` (what the scheduler part's nice is set on)."""
    return [tid for pid in pids for tid in ioprio.threads(pid)]


def nice_of(tids: list[int]) -> dict[int, int]:
    """Each thread's nice, read from the kernel."""
    return {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids}


def ioprio_of(tids: list[int]) -> dict[int, int | None]:
    """Each thread's raw I/O priority, read from the kernel."""
    return {t: ioprio.get(t) for t in tids}
