"""Verification reports are kept, and fetched over D-Bus by the digest a token carries."""

from __future__ import annotations

import json

from schedcpd.tokens import decode, digest_of
from tests.deploy.conftest import FAST
from tests.harness import calls_as
from tests.policy.test_policy_dbus import GOOD, STARVING

ERR = "org.schedcp.Control1.Error."


def test_the_report_a_token_names_is_kept_and_fetched_by_digest(
        start_daemon, test_users: dict[str, int]) -> None:
    proc = start_daemon(FAST)
    [policy_id] = [r["ok"] for r in calls_as(0, proc.address,
                                             [["SubmitPolicy", "s", [GOOD]]])]
    [verified] = calls_as(0, proc.address, [["VerifyPolicy", "s", [policy_id]]])
    token, report = verified["ok"]
    assert token, report
    digest = decode(token)[0]["report_digest"]
    # Any observer may fetch it (an unprivileged uid here): the evidence for the token.
    [fetched] = calls_as(test_users["nobody"], proc.address,
                         [["GetVerificationReport", "s", [digest]]])
    text = fetched["ok"]
    assert digest_of(text) == digest  # exactly the text whose digest was signed
    assert json.loads(text) == json.loads(report)
    assert json.loads(text)["passed"] is True and json.loads(text)["policy_id"] == policy_id

    # A second verification of the same version is a new report with its own digest.
    [again] = calls_as(0, proc.address, [["VerifyPolicy", "s", [policy_id]]])
    other = decode(again["ok"][0])[0]["report_digest"]
    assert other != digest
    unknown, malformed, both = calls_as(0, proc.address, [
        ["GetVerificationReport", "s", ["0" * 64]],
        ["GetVerificationReport", "s", ["not-a-digest"]],
        ["GetVerificationReport", "s", [other]]])
    assert unknown["error"] == ERR + "NotFound", unknown
    assert malformed["error"] == ERR + "InvalidArgument", malformed
    assert digest_of(both["ok"]) == other


def test_a_refused_policy_has_no_token_and_no_report(start_daemon) -> None:
    proc = start_daemon(FAST)
    [policy_id] = [r["ok"] for r in calls_as(0, proc.address,
                                             [["SubmitPolicy", "s", [STARVING]]])]
    [verified] = calls_as(0, proc.address, [["VerifyPolicy", "s", [policy_id]]])
    token, report = verified["ok"]
    assert token == "" and json.loads(report)["passed"] is False
    # Nothing signed, nothing kept: the digest of what was returned is unknown.
    [fetched] = calls_as(0, proc.address, [
        ["GetVerificationReport", "s", [digest_of(json.dumps(json.loads(report),
                                                              sort_keys=True))]]])
    assert fetched["error"] == ERR + "NotFound", fetched
