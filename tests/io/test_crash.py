"""kill -9 between the journal write and the kernel write, and after it: restore is exact.

A child process applies an io policy (device scheduler, queue settings, a
tunable, ioprio of a real process) through the real actuator and is
SIGKILLed by fault injection at the N-th write; then a fresh plugin on the
same journal restores everything, as the daemon does at start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.io import blockdev, ioprio
from plugins.io.plugin import IoPlugin
from plugins.io.sandbox import ScratchDevice
from schedcpd.plugin_api import Journal, PluginContext

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("point", ["io_after_journal_commit:1", "io_after_write:1",
                                   "io_after_journal_commit:3", "io_after_write:5"])
def test_kill_9_mid_apply_then_restore_is_exact(point: str, loopdev: ScratchDevice,
                                                tmp_path: Path) -> None:
    dev = loopdev.name
    before = {k: blockdev.current(dev, k) for k in ("scheduler", "nr_requests",
                                                    "read_ahead_kb")}
    victim = subprocess.Popen(["sleep", "600"])
    try:
        doc = {"device": [{"name": dev, "scheduler": "kyber", "nr_requests": 16,
                           "read_ahead_kb": 512, "tunables": {"read_lat_nsec": 400_000}}],
               "group": [{"name": "g", "match": {"pids": [victim.pid]},
                          "ioprio": {"class": "idle"}}]}
        prio = ioprio.get(victim.pid)
        child = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("crash_child.py")),
             str(tmp_path / "journal.db"), str(tmp_path), json.dumps(doc)],
            env={**os.environ, "SCHEDCP_FAULT": point, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
        assert f"fault injection: SIGKILL at {point.split(':')[0]}" in child.stderr
        journal = Journal(tmp_path / "journal.db")
        try:
            assert any(e.state == "pending" for e in journal.entries(owner="crashed"))
            plugin = IoPlugin()
            plugin.schedcp_startup(PluginContext(state_dir=tmp_path, journal=journal))
            report = plugin.schedcp_restore("io", {})
            assert report is not None and set(report["summary"]) == {"restored"}, report
            assert not journal.pending_restore(subsystem="io")
        finally:
            journal.close()
        assert {k: blockdev.current(dev, k) for k in before} == before
        assert ioprio.get(victim.pid) == prio
    finally:
        victim.kill()
        victim.wait()
