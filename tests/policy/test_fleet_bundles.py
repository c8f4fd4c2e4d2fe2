"""Two hosts, one verifier (issue #25): a bundle verified and signed on A deploys on B.

Each daemon has its own private bus and state directory.  A verifies a T1
policy and exports its bundle with ``schedcpctl``; B trusts A's exported
public key, imports the bundle and deploys with its token, without verifying
anything itself.  Bundles from an untrusted key, a revoked key, with an
expired token, tampered or malformed, are refused by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import KeyStore, TokenAuthority, decode
from tests.deploy.conftest import FAST
from tests.harness import (
    PrivateBus,
    call,
    call_error,
    ctl,
    ctl_json,
    ctl_ok,
    wait_deployment,
    wait_until,
)

ERR = "org.schedcp.Control1.Error."
POLICY = """
[policy]
name = "fleet-{tag}"
description = "a fleet test policy over one sleeper"

[[group]]
name = "sleeper"
match = {{ pid = [{pid}] }}
task = {{ nice = 3 }}
descendants = false
"""


@pytest.fixture
def second_bus() -> Iterator[PrivateBus]:
    """Host B's own bus (one org.schedcp.Control1 per bus)."""
    with PrivateBus() as bus:
        yield bus


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _edit(bundle: str, **fields: str) -> str:
    data = json.loads(bundle)
    data.update(fields)
    return json.dumps(data)


def test_a_bundle_verified_on_one_host_deploys_on_another(
        start_daemon, second_bus: PrivateBus, sleeper: subprocess.Popen[bytes],
        tmp_path: Path) -> None:
    trusted, revoked = tmp_path / "trusted-keys.d", tmp_path / "revoked-keys"
    trusted.mkdir()
    a = start_daemon(FAST)
    b = start_daemon(FAST.replace("[verifier]\n", f'[verifier]\ntrusted_keys_dir = "{trusted}"\n'
                                                  f'revoked_keys_file = "{revoked}"\n'),
                     address=second_bus.address)
    text = POLICY.format(tag="one", pid=sleeper.pid)
    policy_id = call(a.address, "SubmitPolicy", "s", text)

    # A: verify and export (schedcpctl verifies when given no token).
    bundle_file = tmp_path / "fleet-one.bundle"
    ctl_ok(a.address, "bundle", "export", policy_id[:12], "-o", str(bundle_file))
    assert bundle_file.stat().st_mode & 0o777 == 0o600
    bundle = bundle_file.read_text()
    parts = json.loads(bundle)
    assert sorted(parts) == ["format", "policy", "report", "token"]
    assert parts["policy"] == text and parts["format"] == "schedcp-bundle/1"
    claims = decode(parts["token"])[0]
    a_kid = claims["kid"]

    # B does not trust A yet: refused by name, through the CLI as through the bus.
    assert call_error(b.address, "ImportBundle", "s", bundle) == ERR + "UnknownKey"
    out = ctl(b.address, "bundle", "import", str(bundle_file))
    assert out.returncode != 0 and "UnknownKey" in out.stderr, (out.returncode, out.stderr)
    assert call_error(b.address, "Deploy", "s", parts["token"]) == ERR + "UnknownKey"

    # A's operator exports its public key; B's drops it in its trusted-keys.d.
    ctl_ok(a.address, "keys", "export", "-o", str(trusted / "verifier-a.pub"))
    listed = ctl_json(b.address, "keys", "trusted")
    assert [(k["kid"], k["file"], k["revoked"]) for k in listed["keys"]] == \
        [(a_kid, "verifier-a.pub", False)]

    # Tampered and malformed bundles, each by its name; nothing is stored.
    tampered_policy = _edit(bundle, policy=text.replace("nice = 3", "nice = -20"))
    assert call_error(b.address, "ImportBundle", "s", tampered_policy) == \
        ERR + "PolicyTampered"
    report = json.loads(parts["report"])
    report["stages"][0]["seconds"] += 1
    tampered_report = _edit(bundle, report=json.dumps(report, sort_keys=True))
    assert call_error(b.address, "ImportBundle", "s", tampered_report) == \
        ERR + "ReportTampered"
    head, payload, signature = parts["token"].split(".")
    flipped = "A" if signature[10] != "A" else "B"
    forged = _edit(bundle, token=f"{head}.{payload}.{signature[:10]}{flipped}{signature[11:]}")
    assert call_error(b.address, "ImportBundle", "s", forged) == ERR + "BadSignature"
    for bad in ("not json", "[]", _edit(bundle, format="schedcp-bundle/0"),
                _edit(bundle, note="unsigned words"), _edit(bundle, token="schedcp1.x"),
                json.dumps({k: v for k, v in parts.items() if k != "report"})):
        assert call_error(b.address, "ImportBundle", "s", bad) == ERR + "MalformedBundle", bad
    assert call_error(b.address, "GetPolicy", "s", policy_id) == ERR + "NotFound"

    # The genuine bundle: B keeps the policy as verified and the report, exactly.
    result = ctl_json(b.address, "bundle", "import", str(bundle_file))
    assert (result["policy_id"], result["kid"], result["token"]) == \
        (policy_id, a_kid, parts["token"])
    stored = json.loads(call(b.address, "GetPolicy", "s", policy_id))
    assert (stored["state"], stored["provenance"]) == ("verified", "bundle")
    assert a_kid in stored["source"]
    assert call(b.address, "GetVerificationReport", "s", claims["report_digest"]) == \
        parts["report"]

    # B deploys with the token, verifying nothing: the sleeper gets nice 3.
    dep = call(b.address, "Deploy", "s", result["token"])
    wait_deployment(b.address, dep, {"active"}, timeout=60)
    assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 3
    assert call_error(b.address, "Deploy", "s", result["token"]) == ERR + "TokenReplayed"
    call(b.address, "Rollback", "s", dep)
    wait_deployment(b.address, dep, {"reverted"})
    assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 0
    assert "VerifyPolicy" not in {r["method"] for r in json.loads(
        call(b.address, "GetAudit", "us", 1000, ""))}

    # A second bundle is imported; then A's key is revoked on B: its token,
    # imported but not yet redeemed, is refused, and so is any import.
    second = tmp_path / "fleet-two.bundle"
    ctl_ok(a.address, "bundle", "export", policy_id, "-o", str(second))
    token2 = ctl_json(b.address, "bundle", "import", str(second))["token"]
    revoked.write_text(f"# verifier A, key lost\n{a_kid}\n")
    assert call_error(b.address, "ImportBundle", "s", second.read_text()) == ERR + "KeyRevoked"
    assert call_error(b.address, "Deploy", "s", token2) == ERR + "KeyRevoked"
    assert ctl_json(b.address, "keys", "trusted")["keys"][0]["revoked"] is True
    revoked.write_text("")
    assert call(b.address, "PlanDeployment", "s", token2)  # un-revoked: usable again


def test_bundles_signed_by_an_unknown_key_or_expired_are_refused(
        start_daemon, second_bus: PrivateBus, sleeper: subprocess.Popen[bytes],
        tmp_path: Path, test_users: dict[str, int]) -> None:
    """A key the test holds signs a bundle of A's policy and report: refused until B
    trusts it; an expired token is refused even then."""
    trusted = tmp_path / "trusted-keys.d"
    trusted.mkdir()
    a = start_daemon(FAST)
    b = start_daemon(FAST.replace("[verifier]\n", f'[verifier]\ntrusted_keys_dir = "{trusted}"\n'),
                     address=second_bus.address)
    text = POLICY.format(tag="two", pid=sleeper.pid)
    policy_id = call(a.address, "SubmitPolicy", "s", text)
    token, _report = call(a.address, "VerifyPolicy", "s", policy_id)
    parts = json.loads(call(a.address, "ExportBundle", "s", token))
    claims = decode(token)[0]

    store = StateStore(tmp_path / "rogue.sqlite", MIGRATIONS)
    try:
        rogue = TokenAuthority(KeyStore(tmp_path / "rogue-keys"), store)

        def signed(now: float) -> str:
            return asyncio.run(rogue.issue(
                policy_id=claims["policy_id"], policy_digest=claims["policy_digest"],
                subsystem=claims["subsystem"], scope=claims["scope"],
                report_digest=claims["report_digest"], uid=0, now=now))

        fresh, stale = signed(time.time()), signed(time.time() - 3600)
    finally:
        store.close()
    rogue_kid = decode(fresh)[0]["kid"]
    assert call_error(b.address, "ImportBundle", "s", _edit(json.dumps(parts), token=fresh)) \
        == ERR + "UnknownKey"
    (trusted / f"{rogue_kid}.pub").write_bytes((tmp_path / "rogue-keys" /
                                                f"{rogue_kid}.pub").read_bytes())
    wait_until(lambda: rogue_kid in {k["kid"] for k in json.loads(
        call(b.address, "GetTrustedKeys"))["keys"]})
    assert call_error(b.address, "ImportBundle", "s", _edit(json.dumps(parts), token=stale)) \
        == ERR + "TokenExpired"
    # Trusted and fresh: accepted (the same policy and report, another signer), but only
    # for a caller with the verify action: a member of group schedcp has observe and submit.
    fresh_bundle = _edit(json.dumps(parts), token=fresh)
    assert call_error(b.address, "ImportBundle", "s", fresh_bundle,
                      uid=test_users["member"]) == ERR + "AccessDenied"
    assert call_error(b.address, "ExportBundle", "s", token,
                      uid=test_users["member"]) == ERR + "AccessDenied"
    assert json.loads(call(b.address, "GetTrustedKeys", uid=test_users["member"]))["keys"]
    result = json.loads(call(b.address, "ImportBundle", "s",
                             _edit(json.dumps(parts), token=fresh)))
    assert (result["policy_id"], result["kid"]) == (policy_id, rogue_kid)
    audit = json.loads(call(b.address, "GetAudit", "us", 1000, "ImportBundle"))
    assert {r["result"] for r in audit} >= {"ok", ERR + "UnknownKey", ERR + "TokenExpired"}


def test_a_verifier_rotates_its_key_and_hosts_trust_both_for_a_while(
        start_daemon, second_bus: PrivateBus, sleeper: subprocess.Popen[bytes],
        tmp_path: Path) -> None:
    trusted = tmp_path / "trusted-keys.d"
    trusted.mkdir()
    a = start_daemon(FAST)
    b = start_daemon(FAST.replace("[verifier]\n", f'[verifier]\ntrusted_keys_dir = "{trusted}"\n'),
                     address=second_bus.address)
    policy_id = call(a.address, "SubmitPolicy", "s", POLICY.format(tag="three", pid=sleeper.pid))
    old_kid = ctl_json(a.address, "keys", "export", "-o", str(trusted / "a-1.pub"))["kid"]
    before = tmp_path / "before.bundle"
    ctl_ok(a.address, "bundle", "export", policy_id, "-o", str(before))
    old_token = ctl_json(b.address, "bundle", "import", str(before))["token"]

    new_kid = ctl_json(a.address, "keys", "rotate")["kid"]
    assert new_kid != old_kid
    assert [(k["kid"], k["current"]) for k in ctl_json(a.address, "keys", "list")] == \
        [(old_kid, False), (new_kid, True)]
    after = tmp_path / "after.bundle"
    ctl_ok(a.address, "bundle", "export", policy_id, "-o", str(after))
    # The new key is not on B yet; once it is, both keys verify side by side.
    assert call_error(b.address, "ImportBundle", "s", after.read_text()) == ERR + "UnknownKey"
    assert ctl_ok(a.address, "keys", "export").startswith("-----BEGIN PUBLIC KEY-----")
    ctl_ok(a.address, "keys", "export", "-o", str(trusted / "a-2.pub"))
    assert ctl_json(b.address, "bundle", "import", str(after))["kid"] == new_kid
    assert call(b.address, "PlanDeployment", "s", old_token)  # the old key's token still works
    # The old key's file goes (its tokens have run out, or the operator says so).
    (trusted / "a-1.pub").unlink()
    assert call_error(b.address, "PlanDeployment", "s", old_token) == ERR + "UnknownKey"
