"""Who may deploy what, and act on whose deployment: token scope and owners, by real uid."""

from __future__ import annotations

import json
import os

from schedcpd.tokens import PREFIX, decode
from tests.deploy.conftest import FAST, forced_token, policy_text
from tests.harness import PolkitMock, call, calls_as
from tests.harness import wait_deployment as wait_state

ERR = "org.schedcp.Control1.Error."
DEPLOY_ALL = ["org.schedcp.observe", "org.schedcp.submit", "org.schedcp.verify",
              "org.schedcp.deploy"]
# Everyone may deploy (so a caller other than the owner has the deploy action);
# the group schedcp also holds admin: its member acts on any deployment.
SHARED = FAST + ("[authorization]\n"
                 f"everyone_actions = {json.dumps(DEPLOY_ALL)}\n"
                 f"group_actions = {json.dumps([*DEPLOY_ALL, 'org.schedcp.admin'])}\n")


def test_deploy_refuses_a_token_for_another_scope(start_daemon, workload) -> None:
    proc = start_daemon(FAST)
    hogs = [h.pid for h in workload.hogs]
    policy_id = call(proc.address, "SubmitPolicy", "s", policy_text(
        "scope-test", [("batch", hogs[:1], "{ nice = 3 }"), ("web", hogs[1:], "{ nice = 2 }")]))
    # Signed with the daemon's real key, for the right policy digest, but for
    # one group of the two: what a deployment would touch is not what it names.
    for scope in ({"groups": ["batch"]}, {"groups": ["web", "batch"]}, {}):
        token = forced_token(proc.state_dir, proc.address, policy_id, scope=scope)
        claims, _, _ = decode(token)
        assert claims["scope"] == scope and token.startswith(PREFIX)
        for member in ("PlanDeployment", "Deploy"):
            [result] = calls_as(0, proc.address, [[member, "s", [token]]])
            assert result.get("error") == ERR + "ScopeMismatch", (member, scope, result)
            assert "as verified" in result["message"]
    assert all(os.getpriority(os.PRIO_PROCESS, p) == 0 for p in hogs)
    assert json.loads(call(proc.address, "ListDeployments")) == []
    # The policy's own scope, as the verifier signs it, deploys.
    good = forced_token(proc.state_dir, proc.address, policy_id)
    assert decode(good)[0]["scope"] == {"groups": ["batch", "web"]}
    dep = call(proc.address, "Deploy", "s", good)
    assert wait_state(proc.address, dep, {"canary", "active"})["state"] in {"canary", "active"}
    call(proc.address, "Rollback", "s", dep)


def _deploy_as(uid: int, address: str, token: str) -> str:
    [result] = calls_as(uid, address, [["Deploy", "s", [token]]])
    assert "ok" in result, result
    return str(result["ok"])


def test_only_the_owner_or_an_admin_acts_on_a_deployment(start_daemon, workload,
                                                         test_users: dict[str, int]) -> None:
    proc = start_daemon(SHARED.replace("full_seconds = 2.0", "full_seconds = 60.0"))
    member, nobody = test_users["member"], test_users["nobody"]
    hog = workload.hogs[0].pid
    policy_id = call(proc.address, "SubmitPolicy", "s", policy_text(
        "owner-test", [("batch", [hog], "{ nice = 4 }")]))
    # A token is bound to the uid it was issued to.  member verifies for
    # itself; nobody's two tokens are signed here for its uid (forced_token:
    # the daemon's key, the policy's own scope), since what is tested is who
    # acts on a deployment, not the verifier (a dynamic test each, ~2 s).
    [result] = calls_as(member, proc.address, [["VerifyPolicy", "s", [policy_id]]])
    assert result.get("ok") and result["ok"][0], result
    tokens = {"member": result["ok"][0]}
    for name in ("nobody-1", "nobody-2"):
        tokens[name] = forced_token(proc.state_dir, proc.address, policy_id, uid=nobody)

    # member's deployment: nobody (deploy rights, not the owner, not admin) is refused.
    dep = _deploy_as(member, proc.address, tokens["member"])
    assert json.loads(call(proc.address, "GetDeployment", "s", dep))["uid"] == member
    refused = calls_as(nobody, proc.address, [
        ["HoldDeployment", "s", [dep]], ["ReleaseHold", "s", [dep]], ["Rollback", "s", [dep]]])
    for result in refused:
        assert result.get("error") == ERR + "NotOwner", result
        assert f"belongs to uid {member}" in result["message"]
    assert wait_state(proc.address, dep, {"canary", "active"})["state"] in {"canary", "active"}
    # The owner holds and releases it (one connection), and root, an admin, rolls it back.
    owned = calls_as(member, proc.address, [
        ["HoldDeployment", "s", [dep]], ["ReleaseHold", "s", [dep]]])
    assert all("ok" in r for r in owned), owned
    [back] = calls_as(0, proc.address, [["Rollback", "s", [dep]]])
    assert json.loads(back["ok"])["state"] == "reverted"
    assert os.getpriority(os.PRIO_PROCESS, hog) == 0

    # nobody's deployment: member holds the admin action (not root) and may act on it.
    dep = _deploy_as(nobody, proc.address, tokens["nobody-1"])
    admin = calls_as(member, proc.address, [
        ["HoldDeployment", "s", [dep]], ["ReleaseHold", "s", [dep]], ["Rollback", "s", [dep]]])
    assert all("ok" in r for r in admin), admin
    assert json.loads(admin[2]["ok"])["state"] == "reverted"

    # nobody rolls back its own deployment.
    dep = _deploy_as(nobody, proc.address, tokens["nobody-2"])
    [own] = calls_as(nobody, proc.address, [["Rollback", "s", [dep]]])
    assert json.loads(own["ok"])["state"] == "reverted", own
    # Every refusal is in the audit trail under its own name.
    audit = json.loads(call(proc.address, "GetAudit", "us", 100, ""))
    assert sorted(r["method"] for r in audit if r["result"] == ERR + "NotOwner") == [
        "HoldDeployment", "ReleaseHold", "Rollback"]


def test_polkit_admin_may_act_on_anothers_deployment(fresh_bus, start_daemon, workload,
                                                    test_users: dict[str, int]) -> None:
    member, nobody = test_users["member"], test_users["nobody"]
    with PolkitMock(fresh_bus.address) as polkit:
        polkit.set_allowed(DEPLOY_ALL)
        proc = start_daemon(FAST.replace("full_seconds = 2.0", "full_seconds = 60.0"),
                            address=fresh_bus.address)
        policy_id = call(proc.address, "SubmitPolicy", "s", policy_text(
            "polkit-owner-test", [("batch", [workload.hogs[0].pid], "{ nice = 4 }")]))
        [verified] = calls_as(member, proc.address, [["VerifyPolicy", "s", [policy_id]]])
        dep = _deploy_as(member, proc.address, verified["ok"][0])
        [refused] = calls_as(nobody, proc.address, [["Rollback", "s", [dep]]])
        assert refused.get("error") == ERR + "NotOwner", refused
        polkit.set_allowed([*DEPLOY_ALL, "org.schedcp.admin"])
        [allowed] = calls_as(nobody, proc.address, [["Rollback", "s", [dep]]])
        assert json.loads(allowed["ok"])["state"] == "reverted", allowed
