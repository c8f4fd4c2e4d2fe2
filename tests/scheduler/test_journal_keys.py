"""The scheduler's answer to Explain: which journal keys concern a process, and their names."""

from __future__ import annotations

import os
from pathlib import Path

from plugins.scheduler import tasks
from plugins.scheduler.actuator import KIND_MEMBERSHIP, KIND_TASK, KIND_VALUE, SUBSYSTEM, task_key
from plugins.scheduler.journal_keys import describe_key, keys_of_process
from schedcpd.journal import Journal


def test_keys_of_a_process_cover_its_threads_and_its_cgroups(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        pid = os.getpid()
        start = tasks.start_time(pid)
        assert start is not None
        # Rows as the applier writes them: a knob, a move into a cgroup, the
        # cgroup's value; and a row of an earlier process that had this pid.
        journal.record("dep-0123456789ab", KIND_TASK, task_key(pid, start, "nice"), 0, 5,
                       subsystem=SUBSYSTEM)
        journal.record("dep-0123456789ab", KIND_MEMBERSHIP,
                       task_key(pid, start, "cgroup.cpu"), {"path": "/"},
                       {"path": "schedcp.dep-0123456789ab.batch"}, subsystem=SUBSYSTEM)
        journal.record("dep-0123456789ab", KIND_VALUE,
                       "cgroup_value:cpu:schedcp.dep-0123456789ab.batch:cpu.idle", "0", "1",
                       subsystem=SUBSYSTEM)
        journal.record("dep-ffffffffffff", KIND_TASK, task_key(pid, start - 1, "nice"), 0, 9,
                       subsystem=SUBSYSTEM)
        keys = keys_of_process(journal, pid)
        threads = tasks.threads(pid)
        assert len(threads) >= 1
        for tid in threads:
            assert f"task:{tid}:{tasks.start_time(tid)}:" in keys
            assert f"scx_task:{tid}" in keys
        assert "cgroup_value:cpu:schedcp.dep-0123456789ab.batch:" in keys
        # No prefix reaches the earlier process's row.
        assert not any(k.startswith(f"task:{pid}:{start - 1}:") for k in keys)
        assert keys_of_process(journal, 2 ** 22 + 1) == []  # no such process
    finally:
        journal.close()


def test_describe_key_names_target_and_knob() -> None:
    assert describe_key("task:42:17:nice") == {"target": "task:42:17", "knob": "nice"}
    assert describe_key("task:42:17:cgroup.cpu") == {"target": "task:42:17",
                                                      "knob": "cgroup.cpu"}
    assert describe_key("cgroup_value:cpu:schedcp.x.batch:cpu.idle") == {
        "target": "cgroup:cpu:schedcp.x.batch", "knob": "cpu.idle"}
    assert describe_key("cgroup_dir:cpu:schedcp.x.batch") == {
        "target": "cgroup:cpu:schedcp.x.batch", "knob": "directory"}
    assert describe_key("scx_task:42") == {"target": "task:42", "knob": "sched_ext"}
    assert describe_key("scx_loader:dep-1") == {"target": "machine",
                                                "knob": "sched_ext scheduler"}
    assert describe_key("sysctl:kernel.sched_x") == {"target": "sysctl",
                                                     "knob": "kernel.sched_x"}
