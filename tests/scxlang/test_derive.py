"""Offline synthesis: programs derived by rules from a workload profile pass stages 1-2."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from plugins.scheduler import scx_policy
from plugins.scheduler.scxlang.derive import RULES, derive
from schedcp_agent.observe import SHAPES

ROLES = {"latency": ["msglat"], "batch": ["stress-ng"], "build": ["cc1", "make"],
         "long": ["job7"], "interactive": ['bad"name', "x" * 20]}


def classes(shape: str, goal: str = "", roles: dict[str, list[str]] | None = None
            ) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in derive(shape, goal, roles).program["class"]}


@pytest.mark.parametrize("roles", [None, ROLES], ids=["behaviour", "with-roles"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_derives_a_program_that_passes_schema_and_static(
        shape: str, roles: dict[str, list[str]] | None) -> None:
    derived = derive(shape, "latency", roles)
    assert scx_policy.validate(derived.policy) == []
    findings = scx_policy.static_check(derived.policy)
    assert [f for f in findings if f["severity"] == "error"] == []
    bounded = {f["evidence"]["class"] for f in findings if f["code"] == "wait-bound"}
    assert bounded == {c["name"] for c in derived.program["class"]}
    assert derived.rules
    # the policy text round-trips: what the agent would submit is what was checked
    assert tomllib.loads(derived.policy_toml()) == derived.policy


def test_latency_wakers_get_a_fast_preempting_class() -> None:
    got = classes("latency-beside-cpu-hogs", "latency", ROLES)
    assert list(got) == ["named", "wakers", "batch"]
    assert got["named"]["match"] == {"comm": ["msglat", 'bad"name']}  # latency + interactive
    for name in ("named", "wakers"):
        assert got[name]["preempt"] == ["batch"] and got[name]["order"] == "fifo"
        assert got[name]["slice_us"] == "fast_slice_us"
    program = derive("latency-beside-cpu-hogs", "latency").program
    assert program["params"]["fast_slice_us"]["default"] < \
        program["params"]["batch_slice_us"]["default"]
    assert "min_share_pct" in got["batch"]["guard"]


def test_cpu_batch_gets_a_long_slice_with_a_guaranteed_share() -> None:
    derived = derive("cpu-batch", "throughput")
    batch = {c["name"]: c for c in derived.program["class"]}["batch"]
    assert batch["guard"] == {"min_share_pct": 50} and batch["placement"] == "prev"
    assert derived.program["params"]["batch_slice_us"]["default"] == 20000


def test_build_fan_out_gets_throughput_classes() -> None:
    got = classes("fork-churn", "makespan", ROLES)
    assert got["quick"]["order"] == "sjf"
    assert got["build"]["slice_scale"] == "load" and got["build"]["match"] == {
        "comm": ["cc1", "make"]}


def test_long_tail_runs_longest_job_first() -> None:
    got = classes("long-tail-batch", "makespan")
    assert got["longest"]["order"] == "ljf" and got["longest"]["match"] == {"cpu_pct_min": 50}
    assert got["jobs"]["guard"] == {"min_share_pct": 25}


def test_unusable_command_names_are_left_out() -> None:
    got = classes("interactive", "latency", {"interactive": ['bad"name', "x" * 20, "ok"]})
    assert got["named"]["match"] == {"comm": ['bad"name', "ok"]}  # printable, <= 15 chars
    assert set(RULES) <= set(SHAPES)
