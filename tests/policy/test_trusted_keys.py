"""Trusted verifier keys: a daemon accepts tokens another daemon (a verifier host) signed.

The first step towards many hosts (issue #25), and how the sched_ext guest
host deploys T2 policies its own kernel cannot verify (docs/sched_ext.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedcpd import tokens
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import KeyStore, TokenAuthority

DIGEST = "ab" * 32
ARTIFACT = {"object_sha256": "12" * 32, "btf_sha256": "34" * 32}


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[StateStore, StateStore]]:
    a = StateStore(tmp_path / "verifier.sqlite", MIGRATIONS)
    b = StateStore(tmp_path / "host.sqlite", MIGRATIONS)
    yield a, b
    a.close()
    b.close()


def issue(auth: TokenAuthority, **kw: object) -> str:
    args = dict(policy_id=DIGEST, policy_digest=DIGEST, subsystem="scheduler",
                scope={"groups": []}, report_digest="cd" * 32, uid=0)
    args.update(kw)
    return asyncio.run(auth.issue(**args))  # type: ignore[arg-type]


def redeem(auth: TokenAuthority, token: str) -> dict:
    return asyncio.run(auth.redeem(token, uid=0, stored_digest=DIGEST, subsystem="scheduler",
                                   scope={"groups": []}))


def trusting(tmp_path: Path, stores: tuple[StateStore, StateStore],
             revoked: Path | None = None) -> tuple[TokenAuthority, str, KeyStore, TokenAuthority]:
    """A verifier, its key id, and a host that trusts that key (its .pub copied over)."""
    verifier = TokenAuthority(KeyStore(tmp_path / "verifier-keys"), stores[0])
    trusted = tmp_path / "trusted-keys.d"
    trusted.mkdir()
    kid = verifier.keys.held()[0]
    shutil.copy(tmp_path / "verifier-keys" / f"{kid}.pub", trusted / f"{kid}.pub")
    keys = KeyStore(tmp_path / "host-keys", trusted_dir=trusted, revoked_file=revoked)
    return verifier, kid, keys, TokenAuthority(keys, stores[1])


def test_a_token_of_a_trusted_verifier_is_accepted_once(
        tmp_path: Path, stores: tuple[StateStore, StateStore]) -> None:
    verifier = TokenAuthority(KeyStore(tmp_path / "verifier-keys"), stores[0])
    trusted = tmp_path / "trusted-keys.d"
    host = TokenAuthority(KeyStore(tmp_path / "host-keys", trusted_dir=trusted), stores[1])
    token = issue(verifier, artifact=ARTIFACT)
    # Not trusted yet (no directory at all): a named error that says where it looked.
    with pytest.raises(tokens.UnknownKey, match="trusted verifier key"):
        redeem(host, token)
    kid = verifier.keys.held()[0]
    trusted.mkdir()
    shutil.copy(tmp_path / "verifier-keys" / f"{kid}.pub", trusted / f"{kid}.pub")
    claims = redeem(host, token)  # the directory is re-read when it changes
    assert claims["kid"] == kid and claims["artifact"] == ARTIFACT
    with pytest.raises(tokens.TokenReplayed):
        redeem(host, token)
    # Removing the file withdraws the trust.
    (trusted / f"{kid}.pub").unlink()
    with pytest.raises(tokens.UnknownKey):
        redeem(host, issue(verifier))


def test_a_trusted_key_file_must_hold_the_key_it_is_named_for(
        tmp_path: Path, stores: tuple[StateStore, StateStore]) -> None:
    verifier = TokenAuthority(KeyStore(tmp_path / "verifier-keys"), stores[0])
    other = KeyStore(tmp_path / "other-keys")
    trusted = tmp_path / "trusted-keys.d"
    trusted.mkdir()
    kid = verifier.keys.held()[0]
    # The verifier's name on another key's bytes: refused, with the reason.
    shutil.copy(tmp_path / "other-keys" / f"{other.held()[0]}.pub", trusted / f"{kid}.pub")
    (trusted / "garbage.pub").write_text("not a key\n")
    keys = KeyStore(tmp_path / "host-keys", trusted_dir=trusted)
    host = TokenAuthority(keys, stores[1])
    with pytest.raises(tokens.UnknownKey):
        redeem(host, issue(verifier))
    assert "holds key" in keys.trusted_errors[f"{kid}.pub"]
    assert "garbage.pub" in keys.trusted_errors
    assert keys.trusted() == {}  # a misnamed file is not trusted under any name


def test_a_forged_token_naming_a_trusted_key_is_a_bad_signature(
        tmp_path: Path, stores: tuple[StateStore, StateStore]) -> None:
    verifier, _, _, host = trusting(tmp_path, stores)
    head, payload, signature = issue(verifier).split(".")
    forged_claims = tokens.decode(f"{head}.{payload}.{signature}")[0]
    forged_claims["artifact"] = {**ARTIFACT, "object_sha256": "ff" * 32}
    body = base64.urlsafe_b64encode(json.dumps(forged_claims, sort_keys=True).encode())
    forged = f"{head}.{body.rstrip(b'=').decode()}.{signature}"
    with pytest.raises(tokens.BadSignature):
        redeem(host, forged)


@pytest.mark.parametrize("artifact", [{"object_sha256": "12" * 32},
                                      {**ARTIFACT, "btf_sha256": "XY" * 32},
                                      {**ARTIFACT, "extra": "12" * 32}, "12" * 32])
def test_an_artifact_claim_must_be_two_sha256_digests(
        tmp_path: Path, stores: tuple[StateStore, StateStore], artifact: object) -> None:
    verifier = TokenAuthority(KeyStore(tmp_path / "verifier-keys"), stores[0])
    head, payload, signature = issue(verifier).split(".")
    claims = tokens.decode(f"{head}.{payload}.{signature}")[0]
    claims["artifact"] = artifact
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(tokens.InvalidToken, match="artifact"):
        tokens.decode(f"{head}.{body}.{signature}")


def test_two_trusted_keys_at_once_cover_a_verifier_rotation(
        tmp_path: Path, stores: tuple[StateStore, StateStore]) -> None:
    """A verifier rotates: the host trusts old and new until the old one's file goes."""
    verifier = TokenAuthority(KeyStore(tmp_path / "verifier-keys"), stores[0])
    trusted = tmp_path / "trusted-keys.d"
    trusted.mkdir()
    old = verifier.keys.held()[0]
    shutil.copy(tmp_path / "verifier-keys" / f"{old}.pub", trusted / "verifier-old.pub")
    before = issue(verifier)
    new = verifier.keys.rotate()
    (trusted / "verifier-new.pub").write_text(
        next(k["public_key_pem"] for k in verifier.keys.public_keys() if k["current"]))
    after = issue(verifier)
    keys = KeyStore(tmp_path / "host-keys", trusted_dir=trusted)
    host = TokenAuthority(keys, stores[1])
    assert {k["kid"]: k["file"] for k in keys.trusted_keys()["keys"]} == {
        old: "verifier-old.pub", new: "verifier-new.pub"}
    assert redeem(host, before)["kid"] == old
    assert redeem(host, after)["kid"] == new
    (trusted / "verifier-old.pub").unlink()  # the old key's tokens have run out
    with pytest.raises(tokens.UnknownKey, match=old):
        host.check(before)
    assert host.check(issue(verifier))["kid"] == new


def test_a_revoked_key_is_refused_by_id_or_fingerprint_even_while_trusted(
        tmp_path: Path, stores: tuple[StateStore, StateStore]) -> None:
    revoked = tmp_path / "revoked-keys"
    verifier, kid, keys, host = trusting(tmp_path, stores, revoked)
    token = issue(verifier)
    assert host.check(token)["kid"] == kid  # no list: nothing revoked
    fingerprint = next(k["fingerprint"] for k in verifier.keys.public_keys())
    assert fingerprint.startswith(kid)
    for entry in (kid, fingerprint.upper()):
        revoked.write_text(f"# compromised 2026-12-07\n{entry}  # verifier-a\nnot-a-key\n")
        with pytest.raises(tokens.KeyRevoked, match=kid):
            host.check(token)
        assert keys.trusted_keys()["keys"][0]["revoked"] is True
        assert "revoked-keys:3" in keys.revoked_errors
        revoked.write_text("")
        assert host.check(token)["kid"] == kid  # the list is re-read when it changes
    # This daemon's own key is refused too once revoked.
    own = asyncio.run(host.issue(policy_id=DIGEST, policy_digest=DIGEST, subsystem="scheduler",
                                 scope={"groups": []}, report_digest="cd" * 32, uid=0))
    revoked.write_text(keys.held()[0] + "\n")
    with pytest.raises(tokens.KeyRevoked):
        host.check(own)


def test_an_unreadable_revocation_list_refuses_every_trusted_key(
        tmp_path: Path, stores: tuple[StateStore, StateStore]) -> None:
    revoked = tmp_path / "revoked-keys"
    revoked.mkdir()  # exists, but cannot be read as a file
    verifier, _, keys, host = trusting(tmp_path, stores, revoked)
    with pytest.raises(tokens.KeyRevoked):
        host.check(issue(verifier))
    assert "unreadable" in keys.trusted_keys()["errors"][str(revoked)]
    own = asyncio.run(host.issue(policy_id=DIGEST, policy_digest=DIGEST, subsystem="scheduler",
                                 scope={"groups": []}, report_digest="cd" * 32, uid=0))
    assert host.check(own)  # this daemon's own key is not failed closed with the others
