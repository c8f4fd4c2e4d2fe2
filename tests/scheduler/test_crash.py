"""Crash safety: a process applying a policy is SIGKILLed; a fresh start-up restore undoes it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler import cgroups, descendants, tasks
from plugins.scheduler.plugin import SchedulerPlugin
from schedcpd.journal import Journal
from tests.scheduler.helpers import (
    Spawner,
    apply,
    make_plugin,
    policy_doc,
    restore,
    snapshot,
)

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


@contextlib.contextmanager
def _applier(
    db: Path, state_dir: Path, cgroup_parent: str, doc: dict[str, Any], fault: str | None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process applying ``doc`` (then sleeping) that SIGKILLs itself at ``fault``.

    Killed on the way out if it still runs.
    """
    env = dict(os.environ)
    env.pop("SCHEDCP_FAULT", None)
    if fault:
        env["SCHEDCP_FAULT"] = fault
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(state_dir), cgroup_parent, json.dumps(doc)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_applied(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"applied"


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
    db = tmp_path / "journal.db"
    with _applier(db, tmp_path, cgroup_parent, doc, fault) as child:
        if fault is None:
            _wait_applied(child)
            assert snapshot(target.pid) != before
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
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
        rel = cgroups.group_relative(cgroup_parent, "dep-crash", "g")
        assert not cgroups.detect_hierarchies()["cpu"].path(rel).exists()
        plugin.schedcp_shutdown()
    finally:
        journal.close()


def _policy_nice(pid: int) -> tuple[str, int]:
    return tasks.read_knob(pid, "policy"), tasks.read_knob(pid, "nice")


def test_kill_9_after_a_forked_child_is_journaled(
    spawn: Spawner, tmp_path: Path, cgroup_parent: str
) -> None:
    """The applier dies right after committing a child's inherited values: restore undoes them."""
    parent = spawn.forker()
    before = snapshot(parent.pid)
    doc = policy_doc(
        [{"name": "g", "match": {"pid": [parent.pid]}, "task": {"policy": "batch", "nice": 4}}]
    )
    db = tmp_path / "journal.db"
    # Commits 1 and 2 are the parent's nice and policy; 3 is the child's inherited pair.
    with _applier(db, tmp_path, cgroup_parent, doc, "after_journal_commit:3") as applier:
        _wait_applied(applier)
        child = parent.fork()
        assert applier.wait(timeout=60) == -signal.SIGKILL
    assert _policy_nice(child) == ("batch", 4)
    journal = Journal(db)
    try:
        rows = journal.for_key_prefix(f"task:{child}:")
        assert sorted(e.state for e in rows) == ["applied", "applied"]
        plugin = make_plugin(journal, tmp_path, cgroup_parent)
        report = restore(plugin, {})
        assert set(report["summary"]) <= {"restored"}
        assert _policy_nice(child) == ("other", 0)
        assert snapshot(parent.pid) == before
        assert journal.pending_restore() == []
        plugin.schedcp_shutdown()
    finally:
        journal.close()


def test_children_forked_while_the_daemon_was_down_are_given_back(
    spawn: Spawner, tmp_path: Path, cgroup_parent: str
) -> None:
    """Forks of a managed task that no journal saw (here: forked after a SIGKILL; in a
    running daemon: forked during the restore) inherited our values and our cgroup.
    The start-up restore gives them their ancestor's priors and removes the group."""
    parent = spawn.forker()
    before = snapshot(parent.pid)
    doc = policy_doc([{"name": "g", "match": {"pid": [parent.pid]}, "descendants": True,
                       "task": {"policy": "batch", "nice": 4}, "cgroup": {"shares": 64}}])
    db = tmp_path / "journal.db"
    with _applier(db, tmp_path, cgroup_parent, doc, None) as applier:
        _wait_applied(applier)
        applier.send_signal(signal.SIGKILL)
        assert applier.wait(timeout=60) == -signal.SIGKILL
    child = parent.fork()  # nobody is watching
    rel = cgroups.group_relative(cgroup_parent, "dep-crash", "g")
    hierarchy = cgroups.detect_hierarchies()["cpu"]
    assert _policy_nice(child) == ("batch", 4)
    assert cgroups.task_cgroup(child, hierarchy) == rel
    journal = Journal(db)
    try:
        plugin = make_plugin(journal, tmp_path, cgroup_parent)
        report = restore(plugin, {})
        assert set(report["summary"]) <= {"restored"}
        assert [d["tid"] for d in report["descendants"]] == [child]
        assert snapshot(parent.pid) == before
        assert _policy_nice(child) == ("other", 0)
        assert snapshot(child)[str(child)]["cgroup"] == before[str(parent.pid)]["cgroup"]
        assert not hierarchy.path(rel).exists()
        assert journal.pending_restore() == []
        plugin.schedcp_shutdown()
    finally:
        journal.close()


def test_a_descendant_that_changed_a_value_keeps_it(
    plugin: SchedulerPlugin, spawn: Spawner
) -> None:
    """The sweep only gives back values the descendant still holds as we set them."""
    parent = spawn.forker()
    doc = policy_doc([{"name": "g", "match": {"pid": [parent.pid]}, "descendants": True,
                       "task": {"policy": "batch", "nice": 4}}])
    apply(plugin, doc, {"owner": "dep-own"}, False)
    assert plugin.watcher is not None
    plugin.watcher.stop()  # so the fork below goes unseen, as during a restore
    plugin.watcher = None
    child = parent.fork()
    tasks.write_knob(child, "nice", 7)  # the child's own choice
    report = restore(plugin, {"owner": "dep-own"})
    assert report["descendants"] == [{"tid": child, "ancestor": parent.pid, "knobs": ["policy"]}]
    assert _policy_nice(child) == ("other", 7)
    assert _policy_nice(parent.pid) == ("other", 0)


def test_threads_that_already_held_the_value_keep_it(
    plugin: SchedulerPlugin, spawn: Spawner
) -> None:
    """A thread that held the policy's value before the policy needed no entry; the
    restore sweep must not take it for one that inherited ours (t1_probe's worker
    threads set a 1 ns timer slack themselves and were left at 50 us by a rollback)."""
    proc = spawn.threaded(2)
    workers = [t for t in tasks.threads(proc.pid) if t != proc.pid]
    for tid in workers:
        tasks.write_knob(tid, "timer_slack_ns", 1)  # as the threads' own prctl would
    before = snapshot(proc.pid)
    assert before[str(proc.pid)]["timer_slack_ns"] != 1
    time.sleep(2 * descendants.EXISTED_MARGIN)  # the threads clearly predate the policy
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]},
                       "task": {"timer_slack_ns": 1}}])
    apply(plugin, doc, {"owner": "dep-slack"}, False)
    assert all(tasks.read_knob(t, "timer_slack_ns") == 1 for t in tasks.threads(proc.pid))
    report = restore(plugin, {"owner": "dep-slack"})
    assert report["descendants"] == []
    assert snapshot(proc.pid) == before
