"""New matching tasks get the policy within 1 s; descendants restore exactly."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.scheduler import tasks
from plugins.scheduler.actuator import KIND_TASK, task_key
from plugins.scheduler.plugin import SchedulerPlugin
from schedcpd.errors import InvalidArgument
from schedcpd.journal import Journal
from tests.scheduler.helpers import (
    Forker,
    Spawner,
    apply,
    make_plugin,
    policy_doc,
    restore,
    state,
    unique_comm,
)


def _wait_for(pid: int, knob: str, value: object, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if tasks.read_knob(pid, knob) == value:
            return time.monotonic() - start
        time.sleep(0.002)
    return None


@pytest.mark.parametrize("netlink", [True, False], ids=["netlink", "proc-scan"])
def test_new_matching_task_gets_policy(
    spawn: Spawner, journal: Journal, tmp_path: Path, cgroup_parent: str, netlink: bool
) -> None:
    plugin = make_plugin(journal, tmp_path, cgroup_parent, netlink=netlink)
    comm = unique_comm()
    try:
        doc = policy_doc([{"name": "g", "match": {"comm": [comm]}, "task": {"policy": "idle"}}])
        apply(plugin, doc, {"owner": "dep-w"}, False)
        assert state(plugin)["watcher"]["mode"] == ("netlink" if netlink else "scan")
        other = spawn.sleeper()  # does not match: must stay untouched
        proc = spawn.sleeper(comm)
        # The goal is 1 s (measured: ~2 ms netlink, <= 0.7 s scan, see
        # docs/scheduler.md); the bound here is loose because this machine is
        # shared and may be overloaded: the test proves the mechanism works.
        elapsed = _wait_for(proc.pid, "policy", "idle", 10.0)
        assert elapsed is not None, "new matching task never got the policy"
        assert tasks.read_knob(other.pid, "policy") == "other"
        restore(plugin, {"owner": "dep-w"})
        assert tasks.read_knob(proc.pid, "policy") == "other"
    finally:
        restore(plugin, {})
        plugin.schedcp_shutdown()


def test_descendants_inherit_and_restore_exactly(
    plugin: SchedulerPlugin, spawn: Spawner, journal: Journal
) -> None:
    parent = spawn.forker()
    doc = policy_doc(
        [{"name": "g", "match": {"pid": [parent.pid]}, "task": {"policy": "batch", "nice": 4}}]
    )
    apply(plugin, doc, {"owner": "dep-f"}, False)
    child = parent.fork()
    # The kernel makes the child inherit; the watcher journals it.
    assert tasks.read_knob(child, "policy") == "batch"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if any(f"task:{child}:" in e.key for e in journal.pending_restore(owner="dep-f")):
            break
        time.sleep(0.01)
    else:
        pytest.fail("forked child was not journaled")
    # Saved as applied in one go (nothing to write), with the parent's priors.
    rows = journal.for_key_prefix(f"task:{child}:")
    assert {(e.key.rsplit(":", 1)[1], e.prior, e.new, e.state, e.note) for e in rows} == {
        ("policy", "other", "batch", "applied", "inherited at fork"),
        ("nice", 0, 4, "applied", "inherited at fork"),
    }
    restore(plugin, {"owner": "dep-f"})
    assert tasks.read_knob(child, "policy") == "other"
    assert tasks.read_knob(child, "nice") == 0
    assert tasks.read_knob(parent.pid, "policy") == "other"


def test_untargeted_descendants_get_original_values(
    plugin: SchedulerPlugin, spawn: Spawner, journal: Journal
) -> None:
    parent = spawn.forker()
    doc = policy_doc(
        [
            {
                "name": "g",
                "match": {"pid": [parent.pid]},
                "descendants": False,
                "task": {"policy": "idle", "nice": 6},
            }
        ]
    )
    apply(plugin, doc, {"owner": "dep-nd"})
    child = parent.fork()
    deadline = time.monotonic() + 10
    # The undo writes one knob after the other: wait for all of them.
    while time.monotonic() < deadline and (
        tasks.read_knob(child, "policy"), tasks.read_knob(child, "nice")
    ) != ("other", 0):
        time.sleep(0.01)
    assert tasks.read_knob(child, "policy") == "other"
    assert tasks.read_knob(child, "nice") == 0
    assert tasks.read_knob(parent.pid, "policy") == "idle"
    assert not any(f"task:{child}:" in e.key for e in journal.entries(owner="dep-nd"))


def test_child_that_changed_an_inherited_value_is_left_alone(
    plugin: SchedulerPlugin, spawn: Spawner, journal: Journal
) -> None:
    """A child no longer holding what it inherited changed it itself (nice, chrt): not ours."""
    assert plugin.applier is not None
    actuator = plugin.applier.actuator
    child = spawn.sleeper()
    start = tasks.start_time(child.pid)
    assert start is not None
    tasks.write_knob(child.pid, "nice", 2)  # the policy's value would be 4
    tasks.write_knob(child.pid, "policy", "batch")  # what the policy sets: inherited
    nice, pol = task_key(child.pid, start, "nice"), task_key(child.pid, start, "policy")
    changes = actuator.inherit(
        [("dep-i", KIND_TASK, nice, 4, 0), ("dep-i", KIND_TASK, pol, "batch", "other")]
    )
    assert [(c.knob, c.status) for c in changes] == [("nice", "overridden"), ("policy", "changed")]
    assert tasks.read_knob(child.pid, "nice") == 2
    assert journal.for_key(nice) == []
    (entry,) = journal.for_key(pol)
    assert (entry.prior, entry.new, entry.state) == ("other", "batch", "applied")
    # Handled once: a second report of the same child journals nothing more.
    again = actuator.inherit([("dep-i", KIND_TASK, pol, "batch", "other")])
    assert [c.status for c in again] == ["unchanged"]
    actuator.restore("dep-i")
    assert (tasks.read_knob(child.pid, "policy"), tasks.read_knob(child.pid, "nice")) == (
        "other",
        2,
    )


@contextlib.contextmanager
def _following(
    journal: Journal, tmp_path: Path, cgroup_parent: str, delay: float, parent: Forker, owner: str
) -> Iterator[SchedulerPlugin]:
    """A plugin with ``inherit_delay = delay`` applying SCHED_BATCH to ``parent`` and its tree."""
    plugin = make_plugin(journal, tmp_path, cgroup_parent, inherit_delay=delay)
    try:
        doc = policy_doc(
            [{"name": "g", "match": {"pid": [parent.pid]}, "task": {"policy": "batch"}}]
        )
        apply(plugin, doc, {"owner": owner})
        yield plugin
    finally:
        restore(plugin, {})
        plugin.schedcp_shutdown()


def test_children_that_exit_within_the_delay_are_never_journaled(
    spawn: Spawner, journal: Journal, tmp_path: Path, cgroup_parent: str
) -> None:
    parent = spawn.forker()
    with _following(journal, tmp_path, cgroup_parent, 0.5, parent, "dep-short") as plugin:
        parent.churn()
        assert plugin.applier is not None
        deadline = time.monotonic() + 10
        while plugin.applier.children and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not plugin.applier.children
        # Followed (a child that exited before its fork event was read is not counted) ...
        assert state(plugin)["policies"][0]["new_tasks_handled"] >= 10
        # ... but only the parent's own write is in the journal.
        keys = {e.key for e in journal.entries(owner="dep-short")}
        assert keys == {e.key for e in journal.for_key_prefix(f"task:{parent.pid}:")}
        assert len(keys) == 1


def test_restore_covers_children_still_waiting(
    spawn: Spawner, journal: Journal, tmp_path: Path, cgroup_parent: str
) -> None:
    parent = spawn.forker()
    with _following(journal, tmp_path, cgroup_parent, 10, parent, "dep-wait") as plugin:
        child = parent.fork()
        assert plugin.applier is not None
        deadline = time.monotonic() + 5
        while child not in plugin.applier.children and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child in plugin.applier.children  # followed, not journaled yet
        assert journal.for_key_prefix(f"task:{child}:") == []
        assert state(plugin)["watcher"]["children_waiting"] == 1
        assert tasks.read_knob(child, "policy") == "batch"
        report = restore(plugin, {"owner": "dep-wait"})
        assert report["summary"] == {"restored": 2}  # the parent and the waiting child
        assert tasks.read_knob(child, "policy") == "other"
        assert not plugin.applier.children


@pytest.mark.parametrize("value", [-1, 11, float("nan"), "0.1", True])
def test_inherit_delay_must_be_seconds(
    journal: Journal, tmp_path: Path, cgroup_parent: str, value: object
) -> None:
    with pytest.raises(InvalidArgument, match="inherit_delay"):
        make_plugin(journal, tmp_path, cgroup_parent, inherit_delay=value)
