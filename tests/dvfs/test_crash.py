"""kill -9 between the journal write and the sysfs write, and after it: restore is exact.

A child process applies a dvfs policy (governor, EPP, min/max on both
policies of the FAKE tree, boost) through the real actuator and is
SIGKILLed by fault injection at the N-th write; a fresh plugin on the same
journal then restores everything, as the daemon does at start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.dvfs.plugin import DvfsPlugin
from schedcpd.plugin_api import Journal, PluginContext
from tests.dvfs import fake_sysfs

ROOT = Path(__file__).resolve().parents[2]
DOC = {"cpufreq": [{"cpus": "all", "governor": "performance", "epp": "power",
                    "min_khz": 1_000_000, "max_khz": 2_000_000}],
       "boost": {"enabled": False}}


@pytest.mark.parametrize("point", ["dvfs_after_journal_commit:1", "dvfs_after_write:1",
                                   "dvfs_after_journal_commit:4", "dvfs_after_write:9"])
def test_kill_9_mid_apply_then_restore_is_exact(point: str, fake_root: Path,
                                                tmp_path: Path) -> None:
    before = fake_sysfs.snapshot(fake_root)
    child = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("crash_child.py")),
         str(tmp_path / "journal.db"), str(tmp_path), str(fake_root), json.dumps(DOC)],
        env={**os.environ, "SCHEDCP_FAULT": point, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert f"fault injection: SIGKILL at {point.split(':')[0]}" in child.stderr
    assert fake_sysfs.snapshot(fake_root) != before or point.startswith(
        "dvfs_after_journal_commit:1")  # killed mid-way: something was written
    journal = Journal(tmp_path / "journal.db")
    try:
        states = [e.state for e in journal.entries(owner="crashed")]
        assert "pending" in states, states
        plugin = DvfsPlugin()
        plugin.schedcp_startup(PluginContext(state_dir=tmp_path, journal=journal,
                                             config={"sysfs_cpu": str(fake_root)}))
        report = plugin.schedcp_restore("dvfs", {})
        assert report is not None and set(report["summary"]) == {"restored"}, report
        assert not journal.pending_restore(subsystem="dvfs")
    finally:
        journal.close()
    assert fake_sysfs.snapshot(fake_root) == before
