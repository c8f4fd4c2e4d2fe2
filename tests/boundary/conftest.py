"""Fixtures of the privilege-boundary tests: the dvfs tests' FAKE tree and started plugin,
and a real thread to aim per-thread syscall knobs at."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from schedcpd.analysis import procfs
from schedcpd.knobs import Knob
from tests.dvfs.conftest import dvfs, fake_root, journal

__all__ = ["IOPRIO", "dvfs", "fake_root", "journal", "thread_target"]

IOPRIO = Knob("ioprio", "syscall", syscall="ioprio_set", type="int", minimum=0,
              maximum=(3 << 13) | 7)
"""An ioprio knob as a plugin declares it."""


@pytest.fixture
def thread_target() -> Iterator[tuple[int, str]]:
    """A sleeping child process: its pid and its syscall target ``<tid>:<start>``."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stat = procfs.read_pid_stat(child.pid)
        assert stat is not None
        yield child.pid, f"{child.pid}:{stat.starttime}"
    finally:
        child.kill()
        child.wait()
