"""Fixtures of the io plugin tests: real loop devices, a real journal, real processes.

Only loop devices made here are written; the root disk (vda) is never
touched.  Each fixture removes what it made.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.io import ioprio
from plugins.io.plugin import IoPlugin
from plugins.io.sandbox import ScratchDevice, stop
from schedcpd.plugin_api import Journal
from tests.fixtures_plugins import started
from tests.harness import wait_until


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[ScratchDevice]:
    """A 32 MiB loop device over a file in the test's tmp dir."""
    dev = ScratchDevice(32, parent=tmp_path, direct_io=False)
    try:
        yield dev
    finally:
        dev.close()


@pytest.fixture
def writer(loopdev: ScratchDevice) -> Iterator[subprocess.Popen[bytes]]:
    """A real fio writer on the loop device (its job process is forked: both are targets)."""
    proc = subprocess.Popen(
        ["fio", "--name=bulk", f"--filename={loopdev.path}", "--rw=write", "--bs=1M",
         "--direct=1", "--ioengine=libaio", "--iodepth=4", "--time_based=1",
         "--runtime=300", "--rate=8m"], stdout=subprocess.DEVNULL)
    try:
        # fio forks its job process once set up: the group covers both.
        wait_until(lambda: len(ioprio.Selector([], [proc.pid]).scan()) > 1, what="fio job")
        yield proc
    finally:
        stop(proc)


@pytest.fixture
def io_plugin(tmp_path: Path, journal: Journal) -> Iterator[IoPlugin]:
    """A started io plugin on its own journal; everything it wrote is restored after."""
    with started(IoPlugin(), "io", tmp_path, journal) as plugin:
        yield plugin


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process with a second thread and a child (its descendants follow its group)."""
    code = ("import os, threading, time, subprocess, sys\n"
            "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.child_pid = int(proc.stdout.readline())  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        subprocess.run(["kill", "-9", str(proc.child_pid)],  # type: ignore[attr-defined]
                       check=False, capture_output=True)
        proc.kill()
        proc.wait()
