"""cgroup knobs: the plugin's own cgroups, membership and exact restore (cgroup v1 here)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from plugins.scheduler import cgroups, tasks
from plugins.scheduler.plugin import SchedulerPlugin
from schedcpd.errors import InvalidArgument
from schedcpd.journal import Journal
from tests.harness import wait_until
from tests.scheduler.helpers import Spawner, apply, make_plugin, policy_doc, restore, snapshot

HIERARCHIES = cgroups.detect_hierarchies()
needs_cpu = pytest.mark.skipif("cpu" not in HIERARCHIES, reason="no cpu cgroup controller")
needs_cpuset = pytest.mark.skipif("cpuset" not in HIERARCHIES, reason="no cpuset controller")


def _file(controller: str, rel: str, name: str) -> str:
    return (HIERARCHIES[controller].path(rel) / name).read_text().strip()


@needs_cpu
@pytest.mark.parametrize(
    ("table", "files"),
    [
        ({"shares": 64}, {"cpu.shares": "64"}),
        ({"idle": True}, {"cpu.idle": "1"}),
        (
            {"quota_us": 50000, "period_us": 200000},
            {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "200000"},
        ),
    ],
)
def test_cpu_cgroup_values_membership_and_restore(
    plugin: SchedulerPlugin,
    spawn: Spawner,
    cgroup_parent: str,
    table: dict[str, object],
    files: dict[str, str],
) -> None:
    proc = spawn.threaded(2)
    before = snapshot(proc.pid)
    doc = policy_doc([{"name": "grp", "match": {"pid": [proc.pid]}, "cgroup": table}])
    result = apply(plugin, doc, {"owner": "dep-cg"}, False)
    assert result["problems"] == []
    rel = cgroups.group_relative(cgroup_parent, "dep-cg", "grp")
    for name, value in files.items():
        assert _file("cpu", rel, name) == value
    hierarchy = HIERARCHIES["cpu"]
    # Every thread of the target moved; nothing else did.
    assert sorted(cgroups.members(hierarchy, rel)) == tasks.threads(proc.pid)
    report = restore(plugin, {"owner": "dep-cg"})
    assert set(report["summary"]) == {"restored"}
    assert snapshot(proc.pid) == before
    assert not hierarchy.path(rel).exists()


@needs_cpuset
def test_cpuset_moves_and_restores_affinity(
    plugin: SchedulerPlugin, spawn: Spawner, cgroup_parent: str
) -> None:
    proc = spawn.threaded(1)
    # A narrower affinity than the root cpuset: restore must bring it back too.
    for tid in tasks.threads(proc.pid):
        tasks.write_knob(tid, "affinity", [0])
    before = snapshot(proc.pid)
    doc = policy_doc([{"name": "iso", "match": {"pid": [proc.pid]}, "cgroup": {"cpus": "1"}}])
    result = apply(plugin, doc, {"owner": "dep-cs"}, False)
    assert result["problems"] == []
    rel = cgroups.group_relative(cgroup_parent, "dep-cs", "iso")
    assert _file("cpuset", rel, "cpuset.cpus") == "1"
    for tid in tasks.threads(proc.pid):
        assert tasks.read_knob(tid, "affinity") == [1]
    restore(plugin, {"owner": "dep-cs"})
    assert snapshot(proc.pid) == before
    assert not HIERARCHIES["cpuset"].path(rel).exists()


@needs_cpu
def test_untargeted_tasks_are_never_moved(
    plugin: SchedulerPlugin, spawn: Spawner, cgroup_parent: str
) -> None:
    target, bystander = spawn.sleeper(), spawn.sleeper()
    doc = policy_doc([{"name": "g", "match": {"pid": [target.pid]}, "cgroup": {"shares": 100}}])
    apply(plugin, doc, {"owner": "dep-u"}, False)
    cg = Path(f"/proc/{bystander.pid}/cgroup").read_text()
    assert cgroup_parent not in cg
    assert cgroup_parent in Path(f"/proc/{target.pid}/cgroup").read_text()


@needs_cpu
def test_dry_run_of_cgroup_policy_creates_nothing(
    plugin: SchedulerPlugin, spawn: Spawner, cgroup_parent: str
) -> None:
    proc = spawn.sleeper()
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "cgroup": {"shares": 100}}])
    result = apply(plugin, doc, {"owner": "dep-dry"}, dry_run=True)
    assert result["problems"] == []
    knobs = {c["knob"] for c in result["changes"]}
    assert {"cgroup_dir", "cgroup_value", "cgroup.cpu"} <= knobs
    rel = cgroups.group_relative(cgroup_parent, "dep-dry", "g")
    assert not HIERARCHIES["cpu"].path(rel).exists()
    assert cgroup_parent not in Path(f"/proc/{proc.pid}/cgroup").read_text()


@needs_cpu
def test_default_layout_puts_groups_at_the_top_of_the_hierarchy(
    journal: Journal, tmp_path: Path, spawn: Spawner, top_owner: str
) -> None:
    """With no cgroup_parent a group is a sibling of the root's other cgroups, so its
    shares count against the rest of the machine, not just other policy groups."""
    plugin = make_plugin(journal, tmp_path, "")
    try:
        proc = spawn.threaded(2)
        before = snapshot(proc.pid)
        doc = policy_doc([{"name": "build", "match": {"pid": [proc.pid]},
                           "cgroup": {"shares": 4096}}])
        result = apply(plugin, doc, {"owner": top_owner}, False)
        assert result["problems"] == []
        hierarchy = HIERARCHIES["cpu"]
        rel = f"/schedcp.{top_owner}.build"
        assert hierarchy.path(rel).parent == hierarchy.mount
        assert _file("cpu", rel, "cpu.shares") == "4096"
        assert sorted(cgroups.members(hierarchy, rel)) == tasks.threads(proc.pid)
        report = restore(plugin, {"owner": top_owner})
        assert set(report["summary"]) == {"restored"}
        assert snapshot(proc.pid) == before
        assert not hierarchy.path(rel).exists()
    finally:
        plugin.schedcp_shutdown()


@pytest.mark.parametrize("value", ["a/b", "../x", "bad name", 3, None])
def test_cgroup_parent_must_be_one_directory_name(
    journal: Journal, tmp_path: Path, value: object
) -> None:
    with pytest.raises(InvalidArgument, match="cgroup_parent"):
        make_plugin(journal, tmp_path, value)  # type: ignore[arg-type]


@needs_cpu
def test_an_exiting_task_is_gone_not_moved_to_the_root(
    spawn: Spawner, cgroup_parent: str
) -> None:
    """A zombie's /proc/<pid>/cgroup reads "/" on v1; it must read as exited, or a
    managed task that just exited would be reported as moved out of our group."""
    hierarchy = HIERARCHIES["cpu"]
    rel = cgroups.group_relative(cgroup_parent, "dep-exit", "g")
    cgroups.create_group(hierarchy, rel)
    parent = spawn.forker()
    child = parent.fork()
    cgroups.move_task(child, hierarchy, rel)
    assert cgroups.task_cgroup(child, hierarchy) == rel
    os.kill(child, signal.SIGKILL)  # the forker does not reap it: it stays a zombie
    wait_until(lambda: tasks.has_exited(child), 5, "the killed child has exited", interval=0.01)
    assert Path(f"/proc/{child}").exists()
    with pytest.raises(tasks.TaskGone):
        cgroups.task_cgroup(child, hierarchy)
    assert not tasks.has_exited(parent.pid)
