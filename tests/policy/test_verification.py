"""Verifier stages 2 and 4 for T1 policies, and the report the verifier builds.

Stage 2 runs on this machine's real CPUs and RT sysctls; only the RT throttle
being off is shown with stand-in /proc files (FAKE_rt_*: switching the real
throttle off would put every process on the host at risk).  Stage 4 runs the
real sandbox: worker processes, the scheduler plugin's real apply/restore.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler import verification
from schedcpd.verifier import STAGES

HEAD = '[policy]\nname = "t"\ndescription = "verification test"\n'


def group(name: str, task: str = "", cgroup: str = "", match: str = "",
          extra: str = "") -> str:
    match = match or f"{{ comm = [{name!r}] }}"
    out = f'\n[[group]]\nname = "{name}"\nmatch = {match}\n'
    if task:
        out += f"task = {task}\n"
    if cgroup:
        out += f"cgroup = {cgroup}\n"
    return out + extra


def static(text: str, active: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return verification.static_check(tomllib.loads(HEAD + text), active or [])


def codes(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f["code"] for f in findings)


@pytest.mark.parametrize(
    ("text", "code", "field", "why"),
    [
        # Starvation: the latency group's own dependency without a guaranteed share.
        (group("web", "{ nice = -5 }", extra='depends_on = ["db"]\n')
         + group("db", '{ policy = "idle" }'),
         "starvation-risk", "group[1]", "SCHED_IDLE"),
        (group("web", "{ nice = -5 }", extra='depends_on = ["db"]\n')
         + group("db", cgroup="{ quota_us = 2000, period_us = 100000 }"),
         "starvation-risk", "group[1]", "a quota of 2000/100000 us"),
        (group("web", "{ slice_us = 500 }", extra='depends_on = ["db"]\n')
         + group("db", cgroup="{ idle = true }"),
         "starvation-risk", "group[1]", "cpu.idle"),
        # A CFS quota that starves the group itself.
        (group("batch", cgroup="{ quota_us = 1000, period_us = 100000 }"),
         "quota-starves", "group[0].cgroup.quota_us", "under 5% of one CPU"),
        # Unfairness: a weight far above everyone else's.
        (group("hog", "{ nice = -15 }"), "unfair-share", "group[0].task.nice", "28 times"),
        (group("hog", cgroup="{ shares = 65536 }"), "unfair-share", "group[0].cgroup.shares",
         "64 times"),
        # One selector, two opposite treatments.
        (group("a", "{ nice = -5 }", match="{ comm = ['x'] }")
         + group("b", '{ policy = "idle" }', match="{ comm = ['x'] }"),
         "latency-at-idle", "group[0].match", "opposite treatment"),
        # Catch-all selectors that lower everyone or make everyone real-time.
        (group("all", '{ policy = "idle" }', match="{ uid = 0 }"),
         "selects-everything", "group[0].match", "every task"),
        ('\n[safety]\nallow_realtime = true\nrt_priority_max = 10\n'
         + group("all", '{ policy = "fifo", rt_priority = 5 }', match="{ cmdline = '.*' }"),
         "rt-broad", "group[0].match", "FIFO/RR"),
    ],
    ids=["dep-idle", "dep-quota", "dep-cpu-idle", "quota", "unfair-nice", "unfair-shares",
         "same-tasks", "broad-idle", "broad-rt"],
)
def test_static_findings_say_why(text: str, code: str, field: str, why: str) -> None:
    found = [f for f in static(text) if f["code"] == code]
    assert found, static(text)
    assert found[0]["field"] == field and why in found[0]["message"], found[0]
    assert found[0]["severity"] == "error"


def test_builtins_pass_static_analysis() -> None:
    """The scheduler's built-ins (the io plugin checks its own: tests/io)."""
    checked = 0
    for path in sorted(Path(__file__).parents[2].joinpath("policies").glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        if doc["policy"].get("subsystem", "scheduler") != "scheduler" \
                or "subsystems" in doc["policy"]:  # io's in tests/io, multi's in tests/multi
            continue
        assert verification.static_check(doc, []) == [], path.name
        checked += 1
    assert checked >= 6


def test_cpuset_without_an_online_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # Schema allows CPUs that exist; stage 2 checks them against the ones online now.
    monkeypatch.setattr(verification, "_online_cpus", lambda: {0})  # FAKE: CPU 1 "offline"
    found = static(group("pin", cgroup='{ cpus = "1" }'))
    assert codes(found) == ["cpuset-empty"] and found[0]["field"] == "group[0].cgroup.cpus"
    assert static(group("pin", cgroup='{ cpus = "0" }')) == []


@pytest.mark.parametrize(("runtime", "ok"), [("950000", True), ("-1", False),
                                             ("1000000", False)])
def test_realtime_needs_the_kernel_throttle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            runtime: str, ok: bool) -> None:
    (tmp_path / "FAKE_rt_runtime").write_text(runtime + "\n")
    (tmp_path / "FAKE_rt_period").write_text("1000000\n")
    monkeypatch.setattr(verification, "_RT_RUNTIME", tmp_path / "FAKE_rt_runtime")
    monkeypatch.setattr(verification, "_RT_PERIOD", tmp_path / "FAKE_rt_period")
    text = ('\n[safety]\nallow_realtime = true\nrt_priority_max = 20\n'
            + group("audio", '{ policy = "fifo", rt_priority = 10 }'))
    found = static(text)
    assert codes(found) == ([] if ok else ["rt-throttle-off"])
    if not ok:
        assert "nothing caps a FIFO/RR task" in found[0]["message"]


def test_conflict_with_an_active_policy_names_it() -> None:
    active = [{"policy_id": "a" * 64, "name": "already-there",
               "document": HEAD + group("x264", '{ policy = "batch" }')}]
    found = static(group("x264", "{ nice = 5 }"), active)
    assert codes(found) == ["conflicts-active"]
    assert "'already-there'" in found[0]["message"] and "x264" in found[0]["message"]
    assert static(group("x265", "{ nice = 5 }"), active) == []


# -- the verifier over a real repository ---------------------------------------


def test_report_structure_and_conflict_through_the_verifier(verifier) -> None:
    ver, repo = verifier
    active_text = HEAD.replace('"t"', '"live-one"') + group("x264", '{ policy = "batch" }')
    active = [{"policy_id": "b" * 64, "name": "live-one", "document": active_text}]
    pid = asyncio.run(repo.add(HEAD + group("x264", "{ nice = 5 }"), "user", "uid 0"))
    token, report = asyncio.run(ver.verify(pid, 0, active))
    assert token == "" and not report["passed"]
    assert [s["stage"] for s in report["stages"]] == list(STAGES)
    for stage in report["stages"]:
        assert set(stage) == {"stage", "passed", "verdict", "skipped", "findings", "seconds"}
        assert isinstance(stage["seconds"], float) and stage["seconds"] >= 0
        for f in stage["findings"]:
            assert set(f) >= {"code", "severity", "field", "message"}
    schema, stat = report["stages"][:2]
    assert schema["passed"] and not stat["passed"]
    assert [f["code"] for f in stat["findings"]] == ["conflicts-active"]
    assert report["stages"][2]["skipped"] == "an earlier stage failed"
    json.dumps(report)  # the report goes over D-Bus as JSON
