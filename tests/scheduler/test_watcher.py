"""New matching tasks get the policy within 1 s; descendants restore exactly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugins.scheduler import tasks
from plugins.scheduler.plugin import SchedulerPlugin
from schedcpd.journal import Journal
from tests.scheduler.helpers import (
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


FORKER = """
import subprocess, sys
children = []
print("ready", flush=True)
for line in sys.stdin:
    children.append(subprocess.Popen(["sleep", "300"]))
    print(children[-1].pid, flush=True)
"""


def test_descendants_inherit_and_restore_exactly(
    plugin: SchedulerPlugin, spawn: Spawner, journal: Journal
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    spawn.procs.append(parent)
    assert parent.stdin is not None and parent.stdout is not None
    assert parent.stdout.readline().strip() == b"ready"
    doc = policy_doc(
        [{"name": "g", "match": {"pid": [parent.pid]}, "task": {"policy": "batch", "nice": 4}}]
    )
    apply(plugin, doc, {"owner": "dep-f"}, False)
    parent.stdin.write(b"go\n")
    parent.stdin.flush()
    child = int(parent.stdout.readline())
    try:
        # The kernel makes the child inherit; the watcher journals it.
        assert tasks.read_knob(child, "policy") == "batch"
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if any(f"task:{child}:" in e.key for e in journal.pending_restore(owner="dep-f")):
                break
            time.sleep(0.01)
        else:
            pytest.fail("forked child was not journaled")
        restore(plugin, {"owner": "dep-f"})
        assert tasks.read_knob(child, "policy") == "other"
        assert tasks.read_knob(child, "nice") == 0
        assert tasks.read_knob(parent.pid, "policy") == "other"
    finally:
        subprocess.run(["kill", "-9", str(child)], check=False)


def test_untargeted_descendants_get_original_values(
    plugin: SchedulerPlugin, spawn: Spawner, journal: Journal
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    spawn.procs.append(parent)
    assert parent.stdin is not None and parent.stdout is not None
    assert parent.stdout.readline().strip() == b"ready"
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
    parent.stdin.write(b"go\n")
    parent.stdin.flush()
    child = int(parent.stdout.readline())
    try:
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
    finally:
        subprocess.run(["kill", "-9", str(child)], check=False)
