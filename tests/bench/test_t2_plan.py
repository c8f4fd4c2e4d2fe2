"""The T2 track's plan, without a guest: window order, one token per window, renaming.

The guest run itself is tests/microvm/test_bench_t2.py (slow).
"""

from __future__ import annotations

import json

import pytest

from schedcp_bench import t2
from schedcp_bench.t2_arms import T2ArmError, VerifiedArm, renamed
from tests.harness import ROOT


def test_windows_alternate_arms_abba_per_workload() -> None:
    windows = t2.schedule(["default", "policy:scx-vtime", "agent"], ["hackbench"], 2)
    assert [w["arm"] for w in windows] == ["agent", "policy:scx-vtime", "default",
                                           "default", "policy:scx-vtime", "agent"]
    assert [w["rep"] for w in windows] == [0, 0, 0, 1, 1, 1]


def test_every_policy_window_gets_its_own_token() -> None:
    windows = t2.schedule(["default", "agent"], ["hackbench"], 3)
    arm = VerifiedArm("agent", "hackbench", '[policy]\nname = "x"\n',
                      tokens=["tok-a", "tok-b", "tok-c"])
    files = t2.job_files(windows, {("agent", "hackbench"): arm}, ("k.pub", b"key"), seed=1)
    plan = json.loads(files["plan.json"])
    tokens = [files[w["token"]] for w in plan["windows"] if w["arm"] == "agent"]
    assert sorted(tokens) == [b"tok-a", b"tok-b", b"tok-c"]
    assert all("token" not in w for w in plan["windows"] if w["arm"] == "default")
    assert files["k.pub"] == b"key" and b"trusted_keys_dir" in files["schedcpd.toml"]


def test_renamed_changes_the_policy_name_only() -> None:
    text = (ROOT / "policies" / "t2" / "scx-vtime.toml").read_text()
    out = renamed(text, "bench-hackbench-scx-vtime")
    assert 'name = "bench-hackbench-scx-vtime"' in out and "scheduler = \"vtime\"" in out
    with pytest.raises(T2ArmError, match="cannot rename"):
        renamed("[scx]\nscheduler = \"vtime\"\n", "x")
