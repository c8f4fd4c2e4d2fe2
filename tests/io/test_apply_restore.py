"""The io plugin on the real block layer: a loop device, real tasks, a real blkio cgroup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugins.io import blkio, blockdev, ioprio
from plugins.io.plugin import IoPlugin
from plugins.io.sandbox import ScratchDevice
from schedcpd.plugin_api import InvalidArgument, NotFound, NotSupported
from tests.harness import wait_until


def _queue(dev: str) -> dict[str, str]:
    return {"scheduler": blockdev.schedulers(dev)[0],
            **{k: blockdev.read(dev, k) for k in blockdev.QUEUE_KNOBS}}


def _policy(dev: str, pids: list[int], **device: Any) -> dict[str, Any]:
    return {"policy": {"name": "t", "description": "t", "subsystem": "io"},
            "device": [{"name": dev, **device}],
            "group": [{"name": "writer", "match": {"pids": pids},
                       "ioprio": {"class": "idle"},
                       "throttle": [{"device": dev, "write_bps": 10 * 2**20}]}]}


def _tids(proc: subprocess.Popen[bytes]) -> list[int]:
    return [*ioprio.threads(proc.pid), proc.child_pid]  # type: ignore[attr-defined]


def test_apply_then_restore_puts_every_value_back_exactly(
        io_plugin: IoPlugin, loopdev: ScratchDevice, sleeper: subprocess.Popen[bytes]) -> None:
    dev = loopdev.name
    before = _queue(dev)
    prio_before = {t: ioprio.get(t) for t in _tids(sleeper)}
    cg_before = blkio.cgroup_of(sleeper.pid)
    doc = _policy(dev, [sleeper.pid], scheduler="kyber", nr_requests=16, read_ahead_kb=512,
                  tunables={"read_lat_nsec": 500_000})
    assert io_plugin.schedcp_validate("io", doc) == []
    plan = io_plugin.schedcp_apply("io", doc, {"owner": "d1"}, True)
    assert plan is not None and plan["scope"] == "machine"
    assert _queue(dev) == before  # a dry run writes nothing
    assert sorted(plan["targets"]["writer"]) == sorted([sleeper.pid, sleeper.child_pid])  # type: ignore[attr-defined]
    io_plugin.schedcp_apply("io", doc, {"owner": "d1"}, False)
    assert _queue(dev) == {"scheduler": "kyber", "nr_requests": "16", "read_ahead_kb": "512"}
    assert blockdev.read(dev, "iosched/read_lat_nsec") == "500000"
    assert {ioprio.get(t) for t in _tids(sleeper)} == {ioprio.value("idle", 4)}
    cg = blkio.group_dir("d1", "writer")
    assert blkio.cgroup_of(sleeper.pid) == "/" + cg.name
    assert blkio.read_limit(cg, "write_bps", blockdev.identity(dev) or "") == 10 * 2**20

    keys = io_plugin.schedcp_explain_keys("io", sleeper.pid) or []
    assert len(keys) == len(ioprio.threads(sleeper.pid)) + 1  # each thread, and the move
    assert {io_plugin.schedcp_describe_key("io", k)["knob"] for k in keys} == {  # type: ignore[index]
        "ioprio", "blkio cgroup"}
    assert io_plugin.schedcp_explain_keys("io", os.getpid()) == []  # never touched

    report = io_plugin.schedcp_restore("io", {"owner": "d1"})
    assert report is not None and set(report["summary"]) == {"restored"}, report
    assert _queue(dev) == before
    assert {t: ioprio.get(t) for t in _tids(sleeper)} == prio_before
    assert blkio.cgroup_of(sleeper.pid) == cg_before
    assert not cg.exists()


def test_a_value_changed_by_hand_is_left_alone_and_reported(
        io_plugin: IoPlugin, loopdev: ScratchDevice) -> None:
    dev = loopdev.name
    doc = {"device": [{"name": dev, "nr_requests": 16, "read_ahead_kb": 256}]}
    io_plugin.schedcp_apply("io", doc, {"owner": "d2"}, False)
    blockdev.knob_path(dev, "nr_requests").write_text("32")  # the administrator
    report = io_plugin.schedcp_restore("io", {"owner": "d2"})
    assert report is not None
    outcomes = {e["key"].rsplit(":", 1)[1]: e["outcome"] for e in report["entries"]}
    assert outcomes == {"nr_requests": "overridden", "read_ahead_kb": "restored"}
    assert blockdev.read(dev, "nr_requests") == "32"
    state = io_plugin.schedcp_state("io")
    assert state is not None and [e["key"] for e in state["overridden"]] == [
        e["key"] for e in report["entries"] if e["outcome"] == "overridden"]


def test_bad_input_gets_named_errors_and_writes_nothing(
        io_plugin: IoPlugin, loopdev: ScratchDevice) -> None:
    dev = loopdev.name
    before = _queue(dev)
    findings = io_plugin.schedcp_validate("io", {"device": [
        {"name": dev, "nr_requests": 0, "read_ahead_kb": -1, "scheduler": "cfq",
         "tunables": {"read_expire": 5}}],
        "group": [{"name": "g", "match": {"pids": [1]}, "ioprio": {"class": "be", "level": 9},
                   "throttle": [{"device": dev, "write_bps": 0}]}]})
    assert {f["field"] for f in findings or []} >= {
        "device[0].nr_requests", "device[0].read_ahead_kb", "device[0].scheduler",
        "group[0].ioprio.level", "group[0].throttle[0].write_bps"}
    with pytest.raises(NotFound, match="no such block device"):
        io_plugin.schedcp_apply("io", {"device": [{"name": "nosuchdisk9", "nr_requests": 8}]},
                                {"owner": "d3"}, False)
    if "bfq" not in blockdev.schedulers(dev)[1]:
        with pytest.raises(NotSupported, match="not offered"):
            io_plugin.schedcp_apply("io", {"device": [{"name": dev, "scheduler": "bfq"}]},
                                    {"owner": "d3"}, False)
    # A value the kernel refuses midway: what was written before it is restored.
    with pytest.raises(InvalidArgument, match="refused"):
        io_plugin.schedcp_apply("io", {"device": [{"name": dev, "read_ahead_kb": 256,
                                                   "scheduler": "none",
                                                   "nr_requests": 4000}]},
                                {"owner": "d3"}, False)
    assert _queue(dev) == before


def test_a_device_removed_mid_deployment_restores_and_is_reported(
        io_plugin: IoPlugin, tmp_path: Path) -> None:
    dev = ScratchDevice(16, parent=tmp_path, direct_io=False, own_node=True)
    try:
        doc = {"device": [{"name": dev.name, "nr_requests": 16}]}
        io_plugin.schedcp_apply("io", doc, {"owner": "d4"}, False)
        health = io_plugin.schedcp_health("io", {"owner": "d4"})
        assert health == {"healthy": True, "targets": {}}
    finally:
        dev.close()
    health = io_plugin.schedcp_health("io", {"owner": "d4"})
    assert health is not None and not health["healthy"] and health["guard"] == "device_removed"
    report = io_plugin.schedcp_restore("io", {"owner": "d4"})
    assert report is not None and report["summary"] == {"skipped": 1}
    assert "removed" in report["entries"][0]["note"]


def test_a_device_gone_between_plan_and_write_leaves_nothing_half_applied(
        io_plugin: IoPlugin, loopdev: ScratchDevice, tmp_path: Path) -> None:
    from plugins.io import applier

    other = ScratchDevice(16, parent=tmp_path, direct_io=False, own_node=True)
    doc = {"device": [{"name": loopdev.name, "nr_requests": 16},
                      {"name": other.name, "nr_requests": 16}]}
    before = _queue(loopdev.name)
    plan = applier.plan(doc, "d5", None)
    other.close()
    assert io_plugin.actuator is not None
    with pytest.raises(NotFound, match="restored"):
        applier.apply(io_plugin.actuator, plan, "d5")
    assert _queue(loopdev.name) == before


def test_ioprio_on_a_task_that_exits_is_a_recorded_skip(
        io_plugin: IoPlugin, loopdev: ScratchDevice) -> None:
    from plugins.io import applier

    proc = subprocess.Popen(["sleep", "600"])
    doc = {"group": [{"name": "g", "match": {"pids": [proc.pid]}, "ioprio": {"class": "idle"}}]}
    plan = applier.plan(doc, "d6", None)
    proc.kill()
    proc.wait()
    assert io_plugin.actuator is not None
    skipped = applier.apply(io_plugin.actuator, plan, "d6")
    [skip] = skipped
    assert skip["target"] == f"task {proc.pid}" and "gone" in skip["note"], skip
    # The core checks the target before journaling: nothing was written, nothing held.
    assert io_plugin.actuator.journal.entries(owner="d6") == []


def test_descendants_forked_later_are_followed_and_restored(io_plugin: IoPlugin) -> None:
    code = ("import signal, subprocess, time\n"
            "signal.signal(signal.SIGUSR1, lambda *_: subprocess.Popen(['sleep', '600']))\n"
            "print('ready', flush=True)\n"
            "while True: time.sleep(1)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
    try:
        doc = {"group": [{"name": "g", "match": {"pids": [parent.pid]},
                          "ioprio": {"class": "be", "level": 7}}]}
        io_plugin.schedcp_apply("io", doc, {"owner": "d7"}, False)
        os.kill(parent.pid, signal.SIGUSR1)  # it forks a child after the apply
        [child] = wait_until(lambda: ioprio.Selector([], [parent.pid]).scan()[1:],
                             what="the late child")
        assert ioprio.get(child) == ioprio.value("be", 7)  # the kernel copied it at fork
        health = io_plugin.schedcp_health("io", {"owner": "d7"})
        assert health is not None and child in health["targets"]["g"]
        io_plugin.schedcp_restore("io", {"owner": "d7"})
        assert ioprio.get(child) == ioprio.get(parent.pid) == ioprio.value("none", 0)
    finally:
        subprocess.run(["pkill", "-9", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()
