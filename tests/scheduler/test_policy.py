"""Policy schema: built-ins valid; errors name file, field and allowed range."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler import policy
from plugins.scheduler.plugin import SchedulerPlugin
from schedcpd.errors import InvalidArgument
from tests.scheduler.helpers import Spawner, apply, policy_doc, restore, snapshot

POLICIES = Path(__file__).resolve().parents[2] / "policies"
# The scheduler's built-ins (the io plugin's are tested in tests/io, the
# multi-subsystem ones, whose scheduler part is one table, in tests/multi).
BUILTINS = sorted(p for p in POLICIES.glob("*.toml")
                  if tomllib.loads(p.read_text())["policy"].get("subsystem", "scheduler")
                  == "scheduler" and "subsystems" not in tomllib.loads(p.read_text())["policy"])


def test_at_least_six_builtins() -> None:
    assert len(BUILTINS) >= 6


@pytest.mark.parametrize("path", BUILTINS, ids=[p.stem for p in BUILTINS])
def test_builtin_is_valid_and_documented(path: Path) -> None:
    doc = tomllib.loads(path.read_text())
    assert policy.validate(doc, str(path)) == []
    assert doc["policy"]["name"] == path.stem
    assert len(doc["policy"]["description"]) > 80
    assert doc["policy"]["workloads"]
    compiled = policy.compile_policy(doc)
    assert compiled.groups or compiled.sysctl


def _errors(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in policy.validate(doc, "x.toml") if f["severity"] == "error"]


@pytest.mark.parametrize(
    ("task", "field", "text"),
    [
        ({"nice": 25}, "group[0].task.nice", "-20..19"),
        ({"slice_us": 50}, "group[0].task.slice_us", "100..100000"),
        ({"policy": "deadline"}, "group[0].task.policy", "other, batch, idle, fifo, rr"),
        ({"policy": "fifo", "rt_priority": 5}, "group[0].task.policy", "allow_realtime"),
        ({"affinity": "0-63"}, "group[0].task.affinity", "CPUs must be in"),
        ({"bogus": 1}, "group[0].task.bogus", "unknown key"),
    ],
)
def test_errors_name_file_field_and_range(task: dict[str, Any], field: str, text: str) -> None:
    errors = _errors(policy_doc([{"name": "g", "match": {"comm": "x"}, "task": task}]))
    assert [e["field"] for e in errors] == [field]
    assert errors[0]["message"].startswith(f"x.toml: {field}: ")
    assert text in errors[0]["message"]


def test_realtime_needs_cap() -> None:
    group = {"name": "g", "match": {"comm": "x"}, "task": {"policy": "rr", "rt_priority": 30}}
    errors = _errors(policy_doc([group], safety={"allow_realtime": True, "rt_priority_max": 20}))
    assert [e["field"] for e in errors] == ["group[0].task.rt_priority"]
    assert "1..20" in errors[0]["message"]


def test_match_and_combinations() -> None:
    errors = _errors(
        policy_doc(
            [
                {"name": "g", "match": {}, "cgroup": {"idle": True, "shares": 10}},
                {"name": "g", "match": {"cmdline": "("}, "task": {"nice": 1}},
            ]
        )
    )
    fields = {e["field"] for e in errors}
    assert {
        "group[0].match",
        "group[0].cgroup.shares",
        "group[1].name",
        "group[1].match.cmdline",
    } <= fields


def test_sysctl_allow_list_and_parameters() -> None:
    doc = policy_doc(
        [{"name": "g", "match": {"comm": "x"}, "task": {"nice": 5}}],
        sysctl={"sched_rt_runtime_us": -1, "kernel_panic": 1},
        parameters={"n": {"field": "group[0].task.nice", "min": 0, "max": 3}},
    )
    fields = {e["field"] for e in _errors(doc)}
    assert {"sysctl.sched_rt_runtime_us", "sysctl.kernel_panic", "group[0].task.nice"} <= fields


def test_load_raises_with_file_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nname = "Bad Name"\ndescription = "d"\n')
    with pytest.raises(InvalidArgument, match=r"bad\.toml: policy\.name"):
        policy.load(bad)
    good = POLICIES / "latency-protect.toml"
    assert policy.load(good)["policy"]["name"] == "latency-protect"


@pytest.mark.parametrize("path", BUILTINS, ids=[p.stem for p in BUILTINS])
def test_builtin_applies_and_restores_exactly(
    path: Path, plugin: SchedulerPlugin, spawn: Spawner
) -> None:
    doc = tomllib.loads(path.read_text())
    procs = []
    for group in doc["group"]:
        proc = spawn.threaded(1)
        group["match"] = {"pid": [proc.pid]}
        procs.append(proc)
    before = {p.pid: snapshot(p.pid) for p in procs}
    result = apply(plugin, doc, {"owner": f"dep-{path.stem}"})
    assert result["problems"] == []
    assert result["summary"].get("changed", 0) > 0
    assert any(snapshot(p.pid) != before[p.pid] for p in procs)
    report = restore(plugin, {"owner": f"dep-{path.stem}"})
    assert set(report["summary"]) == {"restored"}
    assert {p.pid: snapshot(p.pid) for p in procs} == before


def test_validate_hook_names_the_source_file(plugin: SchedulerPlugin) -> None:
    doc = policy_doc([{"name": "g", "match": {"comm": "x"}, "task": {"nice": 99}}])
    doc["_source"] = "/etc/schedcp/policies.d/mine.toml"
    findings = plugin.schedcp_validate("scheduler", doc)
    assert findings is not None
    assert [f["field"] for f in findings] == ["group[0].task.nice"]
    assert findings[0]["message"].startswith("/etc/schedcp/policies.d/mine.toml: ")
