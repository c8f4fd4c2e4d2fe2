"""A daemon upgraded with open task clamp entries the old dvfs code wrote still restores them.

The old plugin wrote task clamps itself: journal entries of kind ``uclamp``,
key ``uclamp:<tid>:<start>``, no ``target``.  The new plugin hands them to
the core's actuator at start-up (before the daemon's restore).  The entry is
written here the old way into a real journal file, the journal is closed
(the old daemon died), a new plugin starts on it and restores.  This host's
kernel has no CONFIG_UCLAMP_TASK, so the entry's prior is the value the
kernel shows (the restore finds it "already at the prior value"): what is
proven here is that the core takes the entry over, checks it against the
declarations and closes it; the write of a real prior is proven in the
micro-VM guest's uclamp step (tests/microvm/test_cgroup_v2_guest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from plugins.dvfs import uclamp
from schedcpd.plugin_api import APPLIED, RESTORED, SKIPPED, Journal
from tests.dvfs.conftest import start


def test_old_task_clamp_entries_are_restored_by_the_core_after_an_upgrade(
        tmp_path: Path, fake_root: Path) -> None:
    path = tmp_path / "journal.db"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        start_time = uclamp.start_time(child.pid)
        assert start_time is not None
        old = Journal(path)  # the old daemon: its own write, no target
        live = list(uclamp.get(child.pid))
        alive = old.record("d-old", "uclamp", f"uclamp:{child.pid}:{start_time}", live,
                           [512, 900], subsystem="dvfs")
        old.mark_applied(alive)
        dead = old.record("d-old", "uclamp", f"uclamp:{gone.pid}:1", [0, 1024], [512, 900],
                          subsystem="dvfs")
        old.mark_applied(dead)
        old.close()

        journal = Journal(path)  # the upgraded daemon
        plugin = start(tmp_path, journal, fake_root)
        try:
            moved = journal.get(alive)
            assert (moved.kind, moved.target, moved.state) == (
                "uclamp", f"{child.pid}:{start_time}", APPLIED)
            assert journal.get(dead).target == f"{gone.pid}:1"
            report = plugin.schedcp_restore("dvfs", {})
            assert report is not None
            outcomes = {e["id"]: e["outcome"] for e in report["entries"]}
            assert outcomes == {alive: RESTORED, dead: SKIPPED}, report
            assert journal.pending_restore(subsystem="dvfs") == []
        finally:
            plugin.schedcp_shutdown()
            journal.close()
    finally:
        child.kill()
        child.wait()
