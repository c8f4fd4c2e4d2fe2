"""Fixtures of the privilege-boundary tests: a FAKE sysfs-like tree, the dvfs FAKE tree and
started plugin, and a real thread to aim per-thread syscall knobs at."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedcpd.analysis import procfs
from schedcpd.knobs import Knob
from tests.dvfs.conftest import dvfs, fake_root

__all__ = ["IOPRIO", "dvfs", "fake", "fake_root", "thread_target"]

IOPRIO = Knob("ioprio", "syscall", syscall="ioprio_set", type="int", minimum=0,
              maximum=(3 << 13) | 7)
"""An ioprio knob as a plugin declares it."""


@pytest.fixture
def fake(readable_path: Path) -> Path:
    """A FAKE sysfs-like tree: two devices' queue files and one file outside them.

    Root-owned plain files every user may read but not write (the
    out-of-process plugins run as nobody); removed with ``readable_path``.
    """
    root = readable_path / "FAKE-sys"
    for dev in ("sda", "sdb"):
        (root / "block" / dev / "queue").mkdir(parents=True)
        (root / "block" / dev / "queue" / "read_ahead_kb").write_text("128\n")
        (root / "block" / dev / "queue" / "scheduler").write_text("none [mq-deadline]\n")
    (root / "kernel").mkdir()
    (root / "kernel" / "sched_autogroup_enabled").write_text("1\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


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
