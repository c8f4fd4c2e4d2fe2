"""Crash safety: a process applying a policy is SIGKILLed; a fresh start-up restore undoes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.scheduler import cgroups
from schedcpd.journal import Journal
from tests.scheduler.helpers import Spawner, make_plugin, policy_doc, restore, snapshot

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys, time
from pathlib import Path
from schedcpd.journal import Journal
from tests.scheduler.helpers import make_plugin
journal = Journal(Path(sys.argv[1]))
plugin = make_plugin(journal, Path(sys.argv[2]), sys.argv[3])
plugin.schedcp_apply("scheduler", json.loads(sys.argv[4]), {"owner": "dep-crash"}, False)
print("applied", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize(
    "fault",
    [
        "after_journal_commit",
        "after_journal_commit:4",
        "after_write",
        "after_write:6",
        None,  # killed by the test after a complete apply
    ],
)
def test_kill_9_then_startup_restore(
    spawn: Spawner, tmp_path: Path, cgroup_parent: str, fault: str | None
) -> None:
    target = spawn.threaded(1)
    before = snapshot(target.pid)
    doc = policy_doc(
        [
            {
                "name": "g",
                "match": {"pid": [target.pid]},
                "task": {"policy": "idle", "nice": 3, "slice_us": 500, "timer_slack_ns": 1},
                "cgroup": {"shares": 100},
            }
        ]
    )
    env = dict(os.environ)
    env.pop("SCHEDCP_FAULT", None)
    if fault:
        env["SCHEDCP_FAULT"] = fault
    db = tmp_path / "journal.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(tmp_path), cgroup_parent, json.dumps(doc)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        if fault is None:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"applied"
            assert snapshot(target.pid) != before
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    journal = Journal(db)
    try:
        open_entries = journal.pending_restore()
        assert open_entries
        if fault:
            assert open_entries[0].state == "pending"
        # A fresh daemon: the host calls schedcp_restore(subsystem, {}) at start.
        plugin = make_plugin(journal, tmp_path, cgroup_parent)
        report = restore(plugin, {})
        assert set(report["summary"]) <= {"restored"}
        assert snapshot(target.pid) == before
        assert journal.pending_restore() == []
        rel = f"/{cgroup_parent}/dep-crash.g"
        assert not cgroups.detect_hierarchies()["cpu"].path(rel).exists()
        plugin.schedcp_shutdown()
    finally:
        journal.close()
