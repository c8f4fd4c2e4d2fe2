"""Explain: a real T1 deployment on a process the test owns, then its rollback."""

from __future__ import annotations

import json
import os

from schedcpd.tokens import digest_of
from tests.deploy.conftest import FAST, policy_text
from tests.harness import Procs, call, calls_as, wait_deployment, wait_until, wait_workers_ready

ERR = "org.schedcp.Control1.Error."


def test_explain_names_policy_deployment_token_report_and_restore(
        start_daemon, test_users: dict[str, int]) -> None:
    proc = start_daemon(FAST)
    with Procs("schedcp-explain-", new_session=False) as procs:
        hog = procs.worker("spin")
        bystander = procs.worker("spin")
        wait_workers_ready(procs.procs)
        text = policy_text("explain-nice", [("batch", [hog.pid], "{ nice = 6 }")])
        policy_id = call(proc.address, "SubmitPolicy", "s", text)
        token, report_text = call(proc.address, "VerifyPolicy", "s", policy_id)
        assert token, report_text
        dep = call(proc.address, "Deploy", "s", token)
        info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
        assert info["state"] == "active", info["events"]
        assert os.getpriority(os.PRIO_PROCESS, hog.pid) == 6

        # As nobody: explanations need only the observe right, like GetDeployment.
        [answer] = calls_as(test_users["nobody"], proc.address, [["Explain", "s", [str(hog.pid)]]])
        assert "ok" in answer, answer
        why = json.loads(answer["ok"])
        assert why["subject"]["pid"] == hog.pid
        [nice] = [v for v in why["values"] if v["knob"] == "nice"]
        assert (nice["before"], nice["value"], nice["state"]) == (0, 6, "applied"), nice
        assert nice["owner"] == dep and nice["target"].startswith(f"task:{hog.pid}:")
        assert nice["effect"] == "in effect: 0 -> 6"
        record = why["deployments"][dep]
        assert record["state"] == "active"
        assert record["policy"]["name"] == "explain-nice" and record["policy"]["id"] == policy_id
        assert record["policy"]["digest"] == digest_of(text)
        # The token: the key that signed it, its digest, the report it names (the
        # verifier signs the report as json.dumps(sort_keys=True) text).
        signed_report = json.dumps(json.loads(report_text), sort_keys=True)
        keys = {k["kid"] for k in json.loads(call(proc.address, "GetVerifierKeys"))}
        assert record["token"]["kid"] in keys
        assert record["token"]["digest"] == digest_of(token)
        assert record["token"]["report_digest"] == digest_of(signed_report)
        assert record["report"] == {
            "digest": digest_of(signed_report), "kept": True, "passed": True,
            "stages": [{"stage": s["stage"], "passed": s["passed"], "skipped": s["skipped"]}
                       for s in json.loads(report_text)["stages"]]}
        assert call(proc.address, "GetVerificationReport", "s",
                    record["report"]["digest"]) == signed_report
        # The breaker's figures (recorded when it went active) and the history.
        [active] = record["breaker"]["figures"]
        assert active["outcome"] == "active"
        assert active["metrics"]["batch"]["baseline"]["samples"] >= 8, active
        assert [e["state"] for e in record["breaker"]["history"]] == \
            ["pending", "canary", "canary", "active"]
        # A process the deployment did not touch has nothing to explain.
        other = json.loads(call(proc.address, "Explain", "s", str(bystander.pid)))
        assert other["values"] == [] and other["deployments"] == {}

        call(proc.address, "Rollback", "s", dep)
        assert os.getpriority(os.PRIO_PROCESS, hog.pid) == 0
        after = json.loads(call(proc.address, "Explain", "s", str(hog.pid)))
        [nice] = [v for v in after["values"] if v["knob"] == "nice"]
        assert nice["state"] == "restored" and nice["restored"], nice
        assert nice["effect"] == "restored: 6 -> 0"
        assert after["deployments"][dep]["state"] == "reverted"
        assert [f["outcome"] for f in after["deployments"][dep]["breaker"]["figures"]] == \
            ["active", "rolled-back"]
        # The deployment, per target, after it ended.
        whole = json.loads(call(proc.address, "Explain", "s", dep))
        assert whole["deployment"]["state"] == "reverted"
        [target] = [t for t in whole["targets"] if t.startswith(f"task:{hog.pid}:")]
        assert {v["knob"]: v["effect"] for v in whole["targets"][target]}["nice"] == \
            "restored: 6 -> 0"
        assert whole["summary"] == {"restored": len(whole["targets"][target])}

    # The process is gone now: a clear NotFound, and bad subjects by name.
    wait_until(lambda: not os.path.exists(f"/proc/{hog.pid}"), 10, "the worker reaped")
    for subject, error in ((str(hog.pid), "NotFound"), ("dep-000000000000", "NotFound"),
                           ("dep-xyz", "InvalidArgument"), ("0", "InvalidArgument"),
                           ("-5", "InvalidArgument"), ("", "InvalidArgument"),
                           ("99999999999", "InvalidArgument")):
        [result] = calls_as(0, proc.address, [["Explain", "s", [subject]]])
        assert result.get("error") == ERR + error, (subject, result)
        assert result["message"], result
