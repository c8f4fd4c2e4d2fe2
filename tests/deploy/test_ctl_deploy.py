"""schedcpctl's deployment commands against a real daemon: human output and --json."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.deploy.conftest import FAST, policy_text
from tests.harness import (
    CTL,
    ROOT,
    Procs,
    call,
    ctl,
    ctl_json,
    ctl_ok,
    wait_deployment,
    wait_workers_ready,
)


@pytest.mark.slow
def test_deploy_watch_explain_hold_rollback(start_daemon) -> None:
    proc = start_daemon(FAST.replace("full_seconds = 2.0", "full_seconds = 2.5"))
    a = proc.address
    with Procs("schedcp-ctl-", new_session=False) as procs:
        hog = procs.worker("spin")
        wait_workers_ready(procs.procs)
        policy_file = procs.dir / "ctl-nice.toml"
        policy_file.write_text(policy_text("ctl-nice", [("batch", [hog.pid], "{ nice = 4 }")]))
        policy_id = ctl_ok(a, "policy", "submit", str(policy_file)).strip()
        assert ctl_json(a, "policy", "submit", str(policy_file)) == {"policy_id": policy_id}
        out = ctl(a, "--json", "policy", "verify", policy_id)
        assert out.returncode == 0, out.stderr
        assert f"verifying {policy_id[:12]} ..." in out.stderr  # progress on stderr
        assert "done in" in out.stderr
        verified = json.loads(out.stdout)
        token = verified["token"]
        assert token.startswith("schedcp1.")

        # Advice mode: plan, and deploy --plan, write nothing.
        text = ctl_ok(a, "plan", token)
        assert "nothing was written" in text and f"task:{hog.pid}:" in text
        assert "nice" in text and "dry-run" in text
        plan = ctl_json(a, "plan", token)
        [change] = plan["plan"]["changes"]
        assert (change["knob"], change["before"], change["after"]) == ("nice", 0, 4)
        assert ctl_json(a, "deploy", "--plan", token) == plan
        assert ctl_json(a, "deployments") == [] and "no deployments" in ctl_ok(a, "deployments")
        assert os.getpriority(os.PRIO_PROCESS, hog.pid) == 0

        # watch, started first, follows the deployment's four transitions.
        watcher = subprocess.Popen([*CTL, "--bus", a, "--json", "watch", "--count", "4"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            assert watcher.stderr is not None
            assert "watching DeploymentChanged" in watcher.stderr.readline()  # subscribed
            out = ctl(a, "deploy", "--wait", token)
            assert out.returncode == 0, (out.stdout, out.stderr)
            watched, _ = watcher.communicate(timeout=60)
        finally:
            watcher.kill()
        assert watcher.returncode == 0
        assert out.stdout.startswith("deployment dep-") and ": active (" in out.stdout
        dep = out.stdout.split()[1].rstrip(":")
        assert f"{dep}: canary: applied to 1 of 1 target processes" in out.stderr
        assert f"{dep}: active: probation passed" in out.stderr
        lines = [json.loads(line) for line in watched.splitlines()]
        assert [(r["id"], r["state"]) for r in lines] == [
            (dep, "pending"), (dep, "canary"), (dep, "canary"), (dep, "active")], lines
        assert os.getpriority(os.PRIO_PROCESS, hog.pid) == 4

        # List and show.
        assert dep in ctl_ok(a, "deployments") and "ctl-nice" in ctl_ok(a, "deployments", "--live")
        assert [d["id"] for d in ctl_json(a, "deployments", "--live")] == [dep]
        shown = ctl_ok(a, "deployment", "show", dep)
        assert f"deployment {dep}: active" in shown and "token:      key " in shown
        record = ctl_json(a, "deployment", "show", dep)
        assert record["token"]["report_digest"] == json.loads(call(
            a, "GetDeployment", "s", dep))["token"]["report_digest"]

        # Explain the process, then the deployment.
        why = ctl_ok(a, "explain", str(hog.pid))
        assert f"process {hog.pid} (" in why and "in effect: 0 -> 4" in why
        assert f"policy:  ctl-nice, version {policy_id[:12]}" in why
        assert f"report:  {record['token']['report_digest']} passed" in why
        assert "breaker: no trip" in why and "active: batch (" in why
        why_json = ctl_json(a, "explain", str(hog.pid))
        assert [v["effect"] for v in why_json["values"]] == ["in effect: 0 -> 4"]
        report = ctl_json(a, "policy", "report", record["token"]["report_digest"])
        assert report["passed"] is True and report["policy_id"] == policy_id

        # A hold that is released when the command ends leaves the deployment.
        out = ctl(a, "hold", dep, "--timeout", "0.5", "--release-on-exit")
        assert out.returncode == 0, out.stderr
        assert f"holding {dep}" in out.stderr and "released: the deployment stays" in out.stdout
        assert json.loads(call(a, "GetDeployment", "s", dep))["state"] == "active"
        # A plain hold: the daemon rolls it back when the holder leaves.
        held = ctl_json(a, "hold", dep, "--timeout", "0.5")
        assert held["rolled_back_by_leaving"] is True and held["ended_by"] == "timeout"
        info = wait_deployment(a, dep, {"reverted"})
        assert "disconnected" in info["reason"]
        assert os.getpriority(os.PRIO_PROCESS, hog.pid) == 0
        after = ctl_ok(a, "explain", dep)
        assert f"deployment {dep}: reverted" in after and "restored: 4 -> 0" in after

        # Deploy without waiting, then roll back by hand.
        token2 = ctl_json(a, "policy", "verify", policy_id)["token"]
        dep2 = ctl_ok(a, "-q", "deploy", token2).strip()
        assert dep2.startswith("dep-") and dep2 != dep
        wait_deployment(a, dep2, {"canary", "active"})
        # Held while it is rolled back by hand: the hold ends with exit 6.
        holder = subprocess.Popen([*CTL, "--bus", a, "hold", dep2], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert holder.stderr is not None
            assert f"holding {dep2}" in holder.stderr.readline()
            text = ctl_ok(a, "rollback", dep2)
            held_out, held_err = holder.communicate(timeout=30)
        finally:
            holder.kill()
        assert holder.returncode == 6, (held_out, held_err)
        assert "the deployment ended reverted" in held_out and "nothing left to hold" in held_out
        assert text.startswith(f"{dep2} reverted; values: 1 restored"), text
        assert "nice" in text
        restored = ctl_json(a, "explain", dep2)
        [values] = restored["targets"].values()
        assert [v["effect"] for v in values] == ["restored: 4 -> 0"]

        # Bad input: named errors and the documented exit codes.
        out = ctl(a, "rollback", dep2)
        assert out.returncode == 1 and "Error.Conflict" in out.stderr and "already" in out.stderr
        out = ctl(a, "deployment", "show", "dep-nope")
        assert out.returncode == 5 and "dep-0123456789ab" in out.stderr
        out = ctl(a, "explain", "dep-000000000000")
        assert out.returncode == 1 and "Error.NotFound" in out.stderr
        out = ctl(a, "explain", "nonsense")
        assert out.returncode == 5 and "process id" in out.stderr
        out = ctl(a, "deploy", token2)  # used up
        assert out.returncode == 1 and "TokenReplayed" in out.stderr
        out = ctl(a, "hold", dep2)
        assert out.returncode == 5 and "not running" in out.stderr
        out = ctl(a, "deploy", "--timeout", "5", token2)
        assert out.returncode == 2 and "needs --wait" in out.stderr


@pytest.mark.slow
def test_deploy_wait_exits_6_when_the_breaker_reverts(start_daemon, workload) -> None:
    proc = start_daemon(FAST)
    a = proc.address
    policy_id = call(a, "SubmitPolicy", "s", policy_text(
        "ctl-starve", [("probe", [workload.probe.pid], '{ policy = "idle" }')]))
    token = ctl_json(a, "-q", "policy", "verify", policy_id)["token"]
    out = ctl(a, "--json", "deploy", "--wait", token)
    assert out.returncode == 6, (out.stdout, out.stderr)
    dep = json.loads(out.stdout)
    assert dep["state"] == "reverted" and dep["trip"]["guard"] == "wait_per_run_us"
    assert f"{dep['id']}: reverted: circuit breaker:" in out.stderr
    text = ctl_ok(a, "explain", dep["id"])
    assert "breaker: tripped on wait_per_run_us of probe" in text
    assert "restored: " in text
