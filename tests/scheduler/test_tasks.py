"""Apply and restore each per-task knob on processes the test started (real kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.scheduler import tasks
from plugins.scheduler.plugin import SchedulerPlugin
from tests.scheduler.helpers import Spawner, apply, policy_doc, restore, snapshot

# (policy task table, expected read-back per knob)
CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"policy": "idle"}, {"policy": "idle"}),
    ({"policy": "batch"}, {"policy": "batch"}),
    ({"nice": 7}, {"nice": 7}),
    ({"slice_us": 300}, {"slice_ns": 300_000}),
    ({"affinity": "1"}, {"affinity": [1]}),
    ({"timer_slack_ns": 1}, {"timer_slack_ns": 1}),
    ({"autogroup_nice": 3}, {"autogroup_nice": 3}),
    (
        {"policy": "idle", "nice": 4, "slice_us": 2500, "timer_slack_ns": 7, "affinity": [0]},
        {"policy": "idle", "nice": 4, "slice_ns": 2_500_000, "timer_slack_ns": 7, "affinity": [0]},
    ),
]


@pytest.mark.parametrize(("task", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_knob_apply_and_exact_restore(
    plugin: SchedulerPlugin, spawn: Spawner, task: dict[str, Any], expected: dict[str, Any]
) -> None:
    proc = spawn.threaded(2)
    if "autogroup_nice" in task:
        # autogroup nice belongs to the session: give the process its own.
        proc = spawn.own_session()
    before = snapshot(proc.pid)
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "task": task}])
    result = apply(plugin, doc, {"owner": "dep-t"}, False)
    assert result["problems"] == []
    for tid in tasks.threads(proc.pid):
        for knob, value in expected.items():
            if knob == "autogroup_nice" and tid != proc.pid:
                continue
            assert tasks.read_knob(tid, knob) == value, (tid, knob)
    report = restore(plugin, {"owner": "dep-t"})
    assert set(report["summary"]) == {"restored"}
    assert snapshot(proc.pid) == before


def test_dry_run_writes_nothing(plugin: SchedulerPlugin, spawn: Spawner) -> None:
    proc = spawn.sleeper()
    before = snapshot(proc.pid)
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "task": {"nice": 9}}])
    result = apply(plugin, doc, {"owner": "dep-d"}, True)
    assert {"target", "knob", "before", "after"} <= set(result["changes"][0])
    assert result["changes"][0]["before"] == 0 and result["changes"][0]["after"] == 9
    assert snapshot(proc.pid) == before
    assert plugin.journal is not None and plugin.journal.pending_restore() == []


def test_value_changed_twice_returns_to_original(plugin: SchedulerPlugin, spawn: Spawner) -> None:
    proc = spawn.sleeper()
    before = snapshot(proc.pid)
    for nice in (5, 10):
        doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "task": {"nice": nice}}])
        apply(plugin, doc, {"owner": "dep-2x"}, False)
    assert tasks.read_knob(proc.pid, "nice") == 10
    assert plugin.journal is not None and len(plugin.journal.pending_restore()) == 2
    restore(plugin, {"owner": "dep-2x"})
    assert snapshot(proc.pid) == before


def test_exited_task_is_skipped_and_said_so(plugin: SchedulerPlugin, spawn: Spawner) -> None:
    proc = spawn.sleeper()
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "task": {"nice": 3}}])
    apply(plugin, doc, {"owner": "dep-x"}, False)
    proc.kill()
    proc.wait()
    report = restore(plugin, {"owner": "dep-x"})
    outcomes = {e["outcome"] for e in report["entries"]}
    # The watcher may already have marked it skipped on the exit event.
    assert outcomes <= {"skipped"}
    assert plugin.journal is not None
    (entry,) = plugin.journal.entries(owner="dep-x")
    assert entry.state == "skipped" and "exited" in entry.note


def test_second_owner_does_not_touch_managed_value(plugin: SchedulerPlugin, spawn: Spawner) -> None:
    proc = spawn.sleeper()
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "task": {"nice": 3}}])
    apply(plugin, doc, {"owner": "dep-a"}, False)
    doc2 = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "task": {"nice": 8}}])
    result = apply(plugin, doc2, {"owner": "dep-b"}, False)
    assert [p["status"] for p in result["problems"]] == ["conflict"]
    assert tasks.read_knob(proc.pid, "nice") == 3


def test_canary_scope_limits_targets(plugin: SchedulerPlugin, spawn: Spawner) -> None:
    a, b = spawn.sleeper(), spawn.sleeper()
    doc = policy_doc([{"name": "g", "match": {"pid": [a.pid, b.pid]}, "task": {"nice": 6}}])
    result = apply(plugin, doc, {"owner": "dep-c", "pids": [a.pid]}, False)
    assert result["targets"] == {"g": [a.pid]}
    assert tasks.read_knob(a.pid, "nice") == 6
    assert tasks.read_knob(b.pid, "nice") == 0


def test_default_autogroup_reads_none_and_refuses_a_write() -> None:
    """A task whose session never called setsid has an empty /proc/<pid>/autogroup.

    CI runners that start the tests without setsid put every test process
    there; pid 1 always is.  Only reads happen here: the refusal comes before
    any write.
    """
    if tasks.read_autogroup(1) is not None:
        pytest.skip("pid 1 has its own autogroup on this host")
    assert tasks.read_knob(1, "autogroup_nice") is None
    tasks.write_knob(1, "autogroup_nice", None)  # restoring "none" is a no-op
    with pytest.raises(ValueError, match="default autogroup"):
        tasks.write_knob(1, "autogroup_nice", 3)
