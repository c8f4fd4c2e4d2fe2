"""RecordVerdict: a deployment's owner (or an admin) records what it measured, by real uid.

The QUICK windows take a deployment to active in about a second; the
breaker's judgement is not what is checked here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from schedcpd.cli_explain import figure_lines
from tests.deploy.conftest import QUICK, forced_token
from tests.deploy.test_ownership import DEPLOY_ALL
from tests.harness import Procs, call, calls_as, wait_deployment, wait_workers_ready

ERR = "org.schedcp.Control1.Error."
PROFILE = "profile:latency.verdict-test"
# Everyone may deploy; the group schedcp (member) also holds admin, nobody does not.
SHARED = QUICK + ("[authorization]\n"
                  f"everyone_actions = {json.dumps(DEPLOY_ALL)}\n"
                  f"group_actions = {json.dumps([*DEPLOY_ALL, 'org.schedcp.admin'])}\n")


@pytest.fixture
def target() -> Iterator[int]:
    with Procs("schedcp-verdict-") as procs:
        proc = procs.worker("periodic")
        wait_workers_ready([proc])
        yield proc.pid


def _policy(pid: int) -> str:
    return ('[policy]\nname = "verdict-test"\ndescription = "verdict test policy"\n'
            f'tags = ["agent", "{PROFILE}", "base:verdict-test"]\n'
            f'[[group]]\nname = "latency"\nmatch = {{ pid = [{pid}] }}\n'
            'task = { nice = 2 }\ndescendants = false\n')


def _deploy(uid: int, proc, policy_id: str, states: set[str]) -> str:
    token = forced_token(proc.state_dir, proc.address, policy_id, uid=uid)
    [result] = calls_as(uid, proc.address, [["Deploy", "s", [token]]])
    dep = str(result["ok"])
    wait_deployment(proc.address, dep, states)
    return dep


def _verdict(verdict: str, **extra: object) -> str:
    return json.dumps({"verdict": verdict, "metric": "targets' run-queue wait", **extra})


def test_the_owner_records_a_verdict_and_history_shows_it(start_daemon, target: int,
                                                          test_users: dict[str, int]) -> None:
    proc = start_daemon(SHARED)
    member, nobody = test_users["member"], test_users["nobody"]
    policy_id = call(proc.address, "SubmitPolicy", "s", _policy(target))

    dep = _deploy(member, proc, policy_id, {"active"})
    no_gain = _verdict("no-gain", change=-0.02, p_value=0.4, note="within the noise")
    refused, first, again = (
        calls_as(nobody, proc.address, [["RecordVerdict", "ss", [dep, no_gain]]])
        + calls_as(member, proc.address, [["RecordVerdict", "ss", [dep, no_gain]],
                                          ["RecordVerdict", "ss", [dep, _verdict("improved")]]]))
    assert refused.get("error") == ERR + "NotOwner", refused
    assert f"belongs to uid {member}" in refused["message"]
    assert json.loads(first["ok"]) == {"deployment_id": dep, "policy_id": policy_id,
                                       "outcome": "agent:no-gain", "antipattern": None}
    assert again.get("error") == ERR + "Conflict" and "already has a verdict" in again["message"]
    call(proc.address, "Rollback", "s", dep)

    history = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))
    mine = [(o["outcome"], o["metrics"], o["note"]) for o in history["outcomes"]
            if o["deployment_id"] == dep]
    assert mine[0][0] == "active" and mine[-1][0] == "rolled-back", mine
    assert ("agent:no-gain", {"metric": "targets' run-queue wait", "change": -0.02,
                              "p_value": 0.4, "uid": member}, "within the noise") in mine
    assert history["antipatterns"] == []
    # Explain's chain of the deployment carries it too.
    explained = json.loads(call(proc.address, "Explain", "s", dep))["deployment"]
    figures = explained["breaker"]["figures"]
    assert "agent:no-gain" in [f["outcome"] for f in figures], figures
    # schedcpctl explain prints it with the figure it rests on.
    assert any(line.endswith(f"agent:no-gain (uid {member}): targets' run-queue wait, -2%, "
                             "p = 0.4: within the noise") for line in figure_lines(figures)), \
        figure_lines(figures)

    # nobody's deployment of the same version, judged worse by member (an admin).
    dep2 = _deploy(nobody, proc, policy_id, {"active"})
    [worse] = calls_as(member, proc.address, [["RecordVerdict", "ss", [
        dep2, _verdict("worse", change=0.25, note="the wait rose")]]])
    assert json.loads(worse["ok"])["antipattern"] == PROFILE, worse
    history = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))
    [anti] = history["antipatterns"]
    assert (anti["profile"], anti["metric"], anti["regression"]) == (
        PROFILE, "targets' run-queue wait", pytest.approx(1.25))
    assert f"judged {dep2} worse (uid {member})" in anti["detail"]
    call(proc.address, "Rollback", "s", dep2)
    log = proc.log_text()
    assert f"deployment {dep}: verdict no-gain on verdict-test" in log
    assert f"recorded by uid {member}; antipattern for {PROFILE}" in log
    audit = json.loads(call(proc.address, "GetAudit", "us", 100, "RecordVerdict"))
    assert sorted((r["uid"], r["result"].rsplit(".", 1)[-1]) for r in audit) == sorted(
        [(nobody, "NotOwner"), (member, "ok"), (member, "Conflict"), (member, "ok")])


def test_bad_verdicts_get_named_errors(start_daemon, target: int) -> None:
    # A long full-scope window: the deployment stays in canary, never active.
    proc = start_daemon(QUICK.replace("full_seconds = 0.3", "full_seconds = 60.0"))
    policy_id = call(proc.address, "SubmitPolicy", "s", _policy(target))
    dep = _deploy(0, proc, policy_id, {"canary"})
    unknown = "dep-000000000000"
    cases = [
        (dep, "{not json", "InvalidArgument", "verdict: not JSON"),
        (dep, _verdict("meh"), "InvalidArgument",
         "unknown verdict 'meh'; one of improved, no-gain, worse"),
        (dep, json.dumps({"verdict": "worse"}), "InvalidArgument", "'metric' is a required"),
        (dep, _verdict("worse", extra=1), "InvalidArgument", "'extra' was unexpected"),
        (dep, _verdict("worse", p_value=2), "InvalidArgument", "verdict.p_value"),
        (dep, _verdict("worse", change="x"), "InvalidArgument", "verdict.change"),
        (dep, '{"verdict": "worse", "metric": "m", "change": NaN}', "InvalidArgument",
         "finite number"),
        (dep, _verdict("worse", note="x" * 5000), "InvalidArgument", "larger than 4096 bytes"),
        (dep, '{"verdict": "worse", "metric": "\\ud800"}', "InvalidArgument",
         "verdict.metric: not valid Unicode"),
        ("dep-1", _verdict("worse"), "InvalidArgument", "looks like dep-0123456789ab"),
        (unknown, _verdict("worse"), "NotFound", f"no deployment {unknown}"),
        (dep, _verdict("improved"), "Conflict", "never became active (canary)"),
    ]
    results = calls_as(0, proc.address, [["RecordVerdict", "ss", [d, v]] for d, v, _, _ in cases])
    for (_d, _v, error, text), result in zip(cases, results, strict=True):
        assert result.get("error") == ERR + error, (text, result)
        assert text in result["message"], (text, result)
    history = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))
    assert not [o for o in history["outcomes"] if o["outcome"].startswith("agent:")]
    call(proc.address, "Rollback", "s", dep)
