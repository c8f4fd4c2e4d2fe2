"""Authorization with real uids: root, a member of group schedcp, nobody; and polkit."""

from __future__ import annotations

import json
import time

import pytest

from schedcpd.api import collect
from schedcpd.const import ACTIONS
from schedcpd.manager import Manager
from schedcpd.tokens import digest_of
from tests.harness import ROOT, PolkitMock, PrivateBus, SchedcpdProcess, calls_as

PROPS = "org.freedesktop.DBus.Properties"
MGR = "org.schedcp.Control1.Manager"

# Every exported method with valid arguments, and the action it needs.
CALLS = {
    "GetStatus": ["GetStatus", "", [], MGR],
    "GetAudit": ["GetAudit", "us", [5, ""], MGR],
    "Reload": ["Reload", "", [], MGR],
    "Properties.Get": ["Get", "ss", [MGR, "Version"], PROPS],
    "Properties.GetAll": ["GetAll", "s", [MGR], PROPS],
}
DENIED = "org.schedcp.Control1.Error.AccessDenied"
BUILTIN = digest_of((ROOT / "policies" / "latency-protect.toml").read_text())
SUBMITTED = """
[policy]
name = "matrix-test"
description = "a policy submitted by the authorization tests"

[[group]]
name = "g"
match = { comm = ["schedcp-none"] }
task = { nice = 1 }
"""
CALLS.update({
    "ListPolicies": ["ListPolicies", "s", ["latency"], MGR],
    "GetPolicy": ["GetPolicy", "s", [BUILTIN], MGR],
    "GetPolicyHistory": ["GetPolicyHistory", "s", [BUILTIN], MGR],
    "GetVerifierKeys": ["GetVerifierKeys", "", [], MGR],
    "GetVerificationReport": ["GetVerificationReport", "s", ["0" * 64], MGR],
    "SubmitPolicy": ["SubmitPolicy", "s", [SUBMITTED], MGR],
    "SetPolicyState": ["SetPolicyState", "ss", [BUILTIN, "verified"], MGR],
    "VerifyPolicy": ["VerifyPolicy", "s", [BUILTIN], MGR],
    "RotateVerifierKey": ["RotateVerifierKey", "", [], MGR],
    "GetSummary": ["GetSummary", "s", ["brief"], MGR],
    "ListProbes": ["ListProbes", "", [], MGR],
    "RunProbe": ["RunProbe", "sdi", ["cswitch", 0.2, 1], MGR],
    "RunPerfStat": ["RunPerfStat", "isd", [1, "", 0.2], MGR],
    "ListDeployments": ["ListDeployments", "", [], MGR],
    "Deploy": ["Deploy", "s", ["schedcp1.e30.e30"], MGR],
    "PlanDeployment": ["PlanDeployment", "s", ["schedcp1.e30.e30"], MGR],
    "Rollback": ["Rollback", "s", ["dep-000000000000"], MGR],
    "HoldDeployment": ["HoldDeployment", "s", ["dep-000000000000"], MGR],
    "ReleaseHold": ["ReleaseHold", "s", ["dep-000000000000"], MGR],
    "RecordVerdict": ["RecordVerdict", "ss",
                      ["dep-000000000000", '{"verdict": "no-gain", "metric": "wait"}'], MGR],
    "GetDeployment": ["GetDeployment", "s", ["dep-000000000000"], MGR],
    "GetFeedback": ["GetFeedback", "s", ["dep-000000000000"], MGR],
    "GetFeedbackFor": ["GetFeedbackFor", "ss", ["dep-000000000000", "1"], MGR],
    "Explain": ["Explain", "s", ["dep-000000000000"], MGR],
    "GetTrustedKeys": ["GetTrustedKeys", "", [], MGR],
    "ExportBundle": ["ExportBundle", "s", ["schedcp1.e30.e30"], MGR],
    "ImportBundle": ["ImportBundle", "s", ["{}"], MGR],
})
OBSERVE = ("GetStatus", "Properties.Get", "Properties.GetAll", "ListPolicies", "GetPolicy",
           "GetPolicyHistory", "GetVerifierKeys", "GetSummary", "ListProbes", "ListDeployments",
           "GetDeployment", "GetFeedback", "GetFeedbackFor", "GetVerificationReport", "Explain",
           "GetTrustedKeys")
# Called with arguments that name no real object: an allowed caller gets a
# named error other than AccessDenied (NotFound, InvalidToken, ...).
# Profiling is also judged only on refusal: its results have tests of their own.
FAKE_OBJECT = {"Deploy", "PlanDeployment", "Rollback", "HoldDeployment", "ReleaseHold",
               "RecordVerdict",
               "GetDeployment", "GetVerificationReport", "Explain",
               "GetFeedback", "GetFeedbackFor", "RunProbe", "RunPerfStat", "ExportBundle",
               "ImportBundle"}
DEPLOY = ("Deploy", "PlanDeployment", "Rollback", "HoldDeployment", "ReleaseHold",
          "RecordVerdict")
# Bundles need the verify action, as VerifyPolicy does (docs/fleet.md).
ADMIN = ("GetAudit", "Reload", "SetPolicyState", "RotateVerifierKey", "VerifyPolicy",
         "ExportBundle", "ImportBundle")


def test_matrix_covers_every_method() -> None:
    methods, _props, _signals = collect(Manager)
    assert {m.name for m in methods} <= set(CALLS), "add new methods to the matrix"


# Expected outcome per user under the default [authorization] table.
MATRIX = {
    "root": dict.fromkeys(CALLS, True),
    "member": {**dict.fromkeys(OBSERVE, True), **dict.fromkeys(ADMIN, False),
               "SubmitPolicy": True, "RunProbe": True, "RunPerfStat": True,
               **dict.fromkeys(DEPLOY, False)},
    "nobody": {**dict.fromkeys(OBSERVE, True), **dict.fromkeys(ADMIN, False),
               "SubmitPolicy": False, "RunProbe": False, "RunPerfStat": False,
               **dict.fromkeys(DEPLOY, False)},
}


@pytest.mark.parametrize("user", ["root", "member", "nobody"])
def test_config_authorization_matrix(daemon: SchedcpdProcess, test_users: dict[str, int],
                                     user: str) -> None:
    names = list(CALLS)
    results = calls_as(test_users[user], daemon.address, [CALLS[n] for n in names])
    for name, result in zip(names, results, strict=True):
        allowed = MATRIX[user][name]
        if allowed and name in FAKE_OBJECT:
            assert result.get("error") != DENIED, (user, name, result)
            assert "ok" in result or result["error"].startswith("org.schedcp.Control1.Error.")
        elif allowed:
            assert "ok" in result, (user, name, result)
        else:
            assert result.get("error") == DENIED, (user, name, result)
            assert "not authorized" in result["message"]
    status = json.loads(results[0]["ok"])
    assert status["caller"]["uid"] == test_users[user]
    # The caller can see what it may do (an agent checks before it starts).
    held = {"root": set(ACTIONS), "member": {"org.schedcp.observe", "org.schedcp.submit"},
            "nobody": {"org.schedcp.observe"}}[user]
    assert status["access"] == {a: "yes" if a in held else "no" for a in ACTIONS}


def test_group_actions_follow_config(start_daemon, test_users: dict[str, int]) -> None:
    # A member given admin by the table may Reload; nobody still may not.
    proc = start_daemon('[metrics]\nenabled = false\n[authorization]\n'
                        'group_actions = ["org.schedcp.observe", "org.schedcp.admin"]\n')
    member, nobody = (calls_as(test_users[u], proc.address, [CALLS["Reload"]])[0]
                      for u in ("member", "nobody"))
    assert "ok" in member, member
    assert nobody["error"] == DENIED


def test_denied_and_allowed_mutations_are_audited(start_daemon,
                                                  test_users: dict[str, int]) -> None:
    proc = start_daemon()
    calls_as(test_users["nobody"], proc.address, [CALLS["Reload"]])
    calls_as(0, proc.address, [CALLS["Reload"]])
    records = json.loads(calls_as(0, proc.address, [["GetAudit", "us", [10, "Reload"], MGR]])
                         [0]["ok"])
    assert [(r["uid"], r["result"]) for r in records] == [
        (0, "ok"), (test_users["nobody"], DENIED)]
    assert all(len(r["args_digest"]) == 64 and r["pid"] > 0 for r in records)
    assert all(r["method"] == "Reload" and abs(r["time"] - time.time()) < 600 for r in records)
    # Only mutating calls are audited: GetAudit itself (read-only) left no row.
    everything = json.loads(calls_as(0, proc.address, [["GetAudit", "us", [100, ""], MGR]])
                            [0]["ok"])
    assert {r["method"] for r in everything} == {"Reload"}


def test_every_mutating_method_is_audited(start_daemon, test_users: dict[str, int]) -> None:
    # Each audited method refused for nobody, and the harmless ones (no such
    # token, deployment or probe; perf stat of pid 1 for 0.2 s) tried by
    # root: every call leaves a row naming the caller, the method and the
    # outcome.  Audited: every mutating method, and the profilers.
    methods, _props, _signals = collect(Manager)
    mutating = sorted(m.name for m in methods if m.audited)
    assert {m.name for m in methods if m.mutating} <= set(mutating)
    assert {"Reload", "SubmitPolicy", "Deploy", "Rollback", "RunProbe",
            "RunPerfStat"} <= set(mutating)
    proc = start_daemon()
    nobody = test_users["nobody"]
    assert all(r.get("error") == DENIED
               for r in calls_as(nobody, proc.address, [CALLS[m] for m in mutating]))
    as_root = sorted(set(mutating) & FAKE_OBJECT)
    tried = calls_as(0, proc.address, [CALLS[m] for m in as_root])
    records = json.loads(calls_as(0, proc.address, [["GetAudit", "us", [1000, ""], MGR]])
                         [0]["ok"])
    rows = {(r["method"], r["uid"]): r for r in records}
    for name in mutating:
        row = rows.get((name, nobody))
        assert row and row["result"] == DENIED and row["pid"] > 0, (name, row)
    for name, outcome in zip(as_root, tried, strict=True):
        row = rows.get((name, 0))
        assert row and row["result"] == outcome.get("error", "ok"), (name, row, outcome)
    assert len(records) == len(mutating) + len(as_root)


def test_polkit_decides_privileged_actions(fresh_bus: PrivateBus, start_daemon,
                                           test_users: dict[str, int]) -> None:
    with PolkitMock(fresh_bus.address) as polkit:
        proc = start_daemon(address=fresh_bus.address)
        status = json.loads(calls_as(0, proc.address, [CALLS["GetStatus"]])[0]["ok"])
        assert status["authorization"] == "polkit"
        nobody = test_users["nobody"]
        # polkit denies everything by default: admin is refused...
        assert calls_as(nobody, proc.address, [CALLS["Reload"]])[0]["error"] == DENIED
        # ...observe is allowed to everyone without asking polkit at all.
        seen = json.loads(calls_as(nobody, proc.address, [CALLS["GetStatus"]])[0]["ok"])
        assert seen["access"] == {a: "yes" if a == "org.schedcp.observe" else "polkit"
                                  for a in ACTIONS}
        polkit.set_allowed(["org.schedcp.admin"])
        assert "ok" in calls_as(nobody, proc.address, [CALLS["Reload"]])[0]
        # Group membership does not matter once polkit decides.
        polkit.set_allowed([])
        assert calls_as(test_users["member"], proc.address,
                        [CALLS["GetAudit"]])[0]["error"] == DENIED
    # polkit left the bus: the configuration decides again.
    status = json.loads(calls_as(0, proc.address, [CALLS["GetStatus"]])[0]["ok"])
    assert status["authorization"] == "config"
