"""Global knobs: kernel.sched_* sysctls journaled and restored; debugfs reported."""

from __future__ import annotations

import pytest

from plugins.scheduler import sysctl
from plugins.scheduler.plugin import SchedulerPlugin
from tests.scheduler.helpers import apply, policy_doc, restore

# Only affects SCHED_RR tasks; the test restores it at once.
NAME = "sched_rr_timeslice_ms"


@pytest.mark.skipif(NAME not in sysctl.available_sysctls(), reason=f"kernel has no {NAME}")
def test_sysctl_apply_and_restore(plugin: SchedulerPlugin) -> None:
    before = sysctl.read_sysctl(NAME)
    target = 90 if before != "90" else 80
    try:
        result = apply(plugin, policy_doc([], sysctl={NAME: target}), {"owner": "dep-s"}, False)
        assert result["problems"] == []
        assert sysctl.read_sysctl(NAME) == str(target)
        restore(plugin, {"owner": "dep-s"})
        assert sysctl.read_sysctl(NAME) == before
    finally:
        sysctl.write_sysctl(NAME, before)


def test_debugfs_reported_not_failed(plugin: SchedulerPlugin) -> None:
    caps = plugin.schedcp_describe()["capabilities"]  # type: ignore[index]
    ok, reason = sysctl.debugfs_status()
    assert caps["debugfs"] == {"available": ok, "reason": reason}
    if not ok:
        findings = plugin.schedcp_validate(
            "scheduler", policy_doc([], debugfs={"base_slice_ns": 3_000_000})
        )
        assert findings and findings[0]["field"] == "debugfs"


def test_sched_ext_absent_with_reason(plugin: SchedulerPlugin) -> None:
    cap = plugin.schedcp_describe()["capabilities"]["sched_ext"]  # type: ignore[index]
    from pathlib import Path

    assert cap["available"] == Path("/sys/kernel/sched_ext").is_dir()
    assert cap["reason"]
