"""Manual override: a value someone else changed is left alone and reported."""

from __future__ import annotations

import os

from plugins.scheduler import tasks
from plugins.scheduler.plugin import SchedulerPlugin
from tests.scheduler.helpers import Spawner, apply, policy_doc, restore, state


def test_override_detected_reported_and_not_fought(plugin: SchedulerPlugin, spawn: Spawner) -> None:
    proc = spawn.sleeper()
    slack = tasks.read_knob(proc.pid, "timer_slack_ns")
    doc = policy_doc(
        [{"name": "g", "match": {"pid": [proc.pid]}, "task": {"nice": 5, "timer_slack_ns": 1}}]
    )
    apply(plugin, doc, {"owner": "dep-o"}, False)
    os.setpriority(os.PRIO_PROCESS, proc.pid, 2)  # the admin
    (override,) = state(plugin)["overrides"]
    assert override["key"].endswith(":nice") and override["ours"] == 5
    # Re-applying does not fight the admin either.
    result = apply(plugin, doc, {"owner": "dep-o"}, False)
    assert [p["status"] for p in result["problems"]] == ["overridden"]
    assert tasks.read_knob(proc.pid, "nice") == 2
    report = restore(plugin, {"owner": "dep-o"})
    assert report["summary"] == {"restored": 1}
    assert tasks.read_knob(proc.pid, "nice") == 2
    assert tasks.read_knob(proc.pid, "timer_slack_ns") == slack


def test_override_found_at_restore_time(plugin: SchedulerPlugin, spawn: Spawner) -> None:
    proc = spawn.sleeper()
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "task": {"policy": "batch"}}])
    apply(plugin, doc, {"owner": "dep-o2"}, False)
    tasks.write_knob(proc.pid, "policy", "idle")  # someone else
    report = restore(plugin, {"owner": "dep-o2"})
    assert [e["outcome"] for e in report["entries"]] == ["overridden"]
    assert tasks.read_knob(proc.pid, "policy") == "idle"
