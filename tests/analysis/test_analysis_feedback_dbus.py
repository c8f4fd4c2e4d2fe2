"""Tier-3 feedback for a real deployment, asked over D-Bus (GetFeedback)."""

from __future__ import annotations

import json
import os

import pytest

from tests.deploy.conftest import FAST, Workload, policy_text, verified_token
from tests.harness import call, calls_as, wait_deployment

pytestmark = pytest.mark.slow


def _feedback(address: str, dep: str) -> dict:
    return json.loads(call(address, "GetFeedback", "s", dep))


def test_feedback_of_a_deployment_over_dbus(start_daemon) -> None:
    workload = Workload(hogs=2)
    try:
        proc = start_daemon(FAST + "[analysis]\nrate_hz = 5.0\n")
        hogs = [h.pid for h in workload.hogs]
        text = policy_text("feedback-idle-hogs", [("batch", hogs, '{ policy = "idle" }')])
        _policy, token = verified_token(proc.address, text)
        dep = call(proc.address, "Deploy", "s", token)
        # Active, or reverted by the breaker when other work on the host disturbs
        # the guards: feedback covers both, once something was applied.
        info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
        assert "canary" in [e["state"] for e in info["events"]], info["events"]

        live = _feedback(proc.address, dep)
        assert live["deployment"] == dep and live["state"] == info["state"]
        # The baseline is the time before the first write (the daemon sampled it),
        # the after window runs from that write until now.
        assert live["before"]["end"] == pytest.approx(live["after"]["start"], abs=0.01)
        assert live["before"]["samples"] >= 2 and live["after"]["samples"] >= 2, live
        for name, m in live["metrics"].items():
            for side in ("before", "after"):
                s = m[side]
                assert s is not None, (name, side)
                assert s["p10"] <= s["median"] <= s["p90"], (name, s)
            assert m["delta"] == pytest.approx(m["after"]["median"] - m["before"]["median"],
                                               abs=1e-5)
        # The deployment's targets get their own series, both windows.
        assert set(live["pids"]) == {str(p) for p in hogs}
        for per in live["pids"].values():
            assert per["cpu"]["before"]["n"] >= 2 and per["cpu"]["after"]["n"] >= 2, per
            assert per["wait"]["after"] is not None

        if info["state"] == "active":
            assert json.loads(call(proc.address, "Rollback", "s", dep))["state"] == "reverted"
        ended = _feedback(proc.address, dep)
        again = _feedback(proc.address, dep)
        assert ended["state"] == "reverted"
        # Once reverted, the after window ends at the revert, not at "now".
        assert again["after"]["end"] == pytest.approx(ended["after"]["end"], abs=0.1)
        assert ended["after"]["end"] >= live["after"]["end"] - 0.1

        # Observation only: anyone may ask, an unknown id is NotFound.
        missing = calls_as(0, proc.address, [["GetFeedback", "s", ["dep-000000000000"]]])[0]
        assert missing["error"] == "org.schedcp.Control1.Error.NotFound"

        # GetFeedbackFor adds processes the deployment does not target (here the
        # test itself), with their own series; anything but pids is refused by name.
        me = str(os.getpid())
        more = json.loads(call(proc.address, "GetFeedbackFor", "ss", dep, f"{me}, {hogs[0]}"))
        assert set(more["pids"]) == {str(p) for p in hogs} | {me}
        assert {"cpu", "wait", "io_kbs"} <= set(more["pids"][me])
        for bad in ("1,x", "-3", ",".join(str(i) for i in range(1, 70))):
            got = calls_as(0, proc.address, [["GetFeedbackFor", "ss", [dep, bad]]])[0]
            assert got["error"] == "org.schedcp.Control1.Error.InvalidArgument", (bad, got)
    finally:
        workload.stop()
