"""Deployment tokens: every way a token can be wrong is refused with its own error."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedcpd import tokens
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import KeyStore, TokenAuthority

DIGEST = "ab" * 32


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[TokenAuthority]:
    store = StateStore(tmp_path / "db.sqlite", MIGRATIONS)
    yield TokenAuthority(KeyStore(tmp_path / "keys"), store)
    store.close()


def issue(auth: TokenAuthority, **kw: object) -> str:
    args = dict(policy_id=DIGEST, policy_digest=DIGEST, subsystem="scheduler",
                scope={"groups": ["batch"]}, report_digest="cd" * 32, uid=1000)
    args.update(kw)
    return asyncio.run(auth.issue(**args))  # type: ignore[arg-type]


def redeem(auth: TokenAuthority, token: str, uid: int = 1000, digest: str | None = DIGEST,
           now: float | None = None, subsystem: str = "scheduler",
           scope: dict | None = None) -> dict:
    return asyncio.run(auth.redeem(token, uid=uid, stored_digest=digest, now=now,
                                   subsystem=subsystem,
                                   scope={"groups": ["batch"]} if scope is None else scope))


def claims_of(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def test_good_token_carries_every_claim_and_redeems_once(authority: TokenAuthority) -> None:
    before = time.time()
    token = issue(authority)
    claims = redeem(authority, token)
    assert claims["policy_digest"] == DIGEST and claims["uid"] == 1000
    assert claims["subsystem"] == "scheduler" and claims["scope"] == {"groups": ["batch"]}
    assert claims["report_digest"] == "cd" * 32 and len(claims["nonce"]) == 32
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] == pytest.approx(tokens.DEFAULT_LIFETIME)
    with pytest.raises(tokens.TokenReplayed):
        redeem(authority, token)


def test_root_may_redeem_anyones_token(authority: TokenAuthority) -> None:
    redeem(authority, issue(authority), uid=0)


def test_nonces_survive_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "db.sqlite", MIGRATIONS)
    auth = TokenAuthority(KeyStore(tmp_path / "keys"), store)
    token = issue(auth)
    redeem(auth, token)
    store.close()
    store = StateStore(tmp_path / "db.sqlite", MIGRATIONS)
    again = TokenAuthority(KeyStore(tmp_path / "keys"), store)
    with pytest.raises(tokens.TokenReplayed):
        redeem(again, token)
    store.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper(token: str, **changes: object) -> str:
    prefix, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(changes)
    return f"{prefix}.{_b64(json.dumps(claims).encode())}.{sig}"


def _forge(auth: TokenAuthority, **changes: object) -> str:
    """Claims made up by an attacker naming this daemon's key, signed with another key."""
    claims = claims_of(issue(auth)) | {"nonce": "f" * 32} | changes
    signed = f"schedcp1.{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(Ed25519PrivateKey.generate().sign(signed.encode()))}"


# The proof list of the issue, one distinct named error each (plus malformed input).
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda a, o: _forge(a, uid=0), tokens.BadSignature),
        (lambda a, o: issue(a)[:-4] + "AAAA", tokens.BadSignature),
        (lambda a, o: issue(o), tokens.UnknownKey),
        (lambda a, o: issue(a, lifetime=0.001, now=1000.0), tokens.TokenExpired),
        (lambda a, o: _tamper(issue(a), uid=0), tokens.TokenTampered),
        (lambda a, o: _tamper(issue(a), exp=4e9), tokens.TokenTampered),
        (lambda a, o: _tamper(issue(a), policy_digest="ef" * 32), tokens.TokenTampered),
        (lambda a, o: "schedcp1.e30.e30", tokens.InvalidToken),
        (lambda a, o: "garbage", tokens.InvalidToken),
    ],
    ids=["forged-signature", "altered-signature", "other-key", "expired", "tampered-uid",
         "tampered-expiry", "tampered-digest", "missing-claims", "garbage"],
)
def test_bad_tokens_are_refused(authority: TokenAuthority, tmp_path: Path, make, error) -> None:
    other_store = StateStore(tmp_path / "other.sqlite", MIGRATIONS)
    other = TokenAuthority(KeyStore(tmp_path / "other-keys"), other_store)
    try:
        with pytest.raises(error) as info:
            redeem(authority, make(authority, other))
        assert type(info.value) is error  # not a subclass standing in for another
    finally:
        other_store.close()


def test_tampering_names_the_changed_claims(authority: TokenAuthority) -> None:
    with pytest.raises(tokens.TokenTampered, match=r"changed: exp, uid$"):
        redeem(authority, _tamper(issue(authority), uid=0, exp=4e9))


def test_changed_policy_and_other_uid(authority: TokenAuthority) -> None:
    with pytest.raises(tokens.PolicyChanged):
        redeem(authority, issue(authority), digest="ef" * 32)
    with pytest.raises(tokens.PolicyChanged):
        redeem(authority, issue(authority), digest=None)
    with pytest.raises(tokens.WrongCaller):
        redeem(authority, issue(authority), uid=1001)


def test_a_token_for_another_scope_is_refused_and_not_consumed(
        authority: TokenAuthority) -> None:
    # Signed with the real key (no tampering): only the scope differs from
    # the policy's, as an issuer with a bug or a leaked key would make it.
    narrow = issue(authority, scope={"groups": ["batch", "web"]})
    with pytest.raises(tokens.ScopeMismatch, match=r'"batch", "web".*as verified'):
        redeem(authority, narrow)
    with pytest.raises(tokens.ScopeMismatch, match=r"subsystem 'scheduler'.*'io'"):
        redeem(authority, issue(authority), subsystem="io")
    with pytest.raises(tokens.ScopeMismatch):
        redeem(authority, issue(authority, scope={}))
    # Refused before the nonce: the same token for the right scope still redeems.
    redeem(authority, narrow, scope={"groups": ["batch", "web"]})


def test_errors_have_distinct_dbus_names() -> None:
    kinds = (tokens.InvalidToken, tokens.BadSignature, tokens.TokenTampered, tokens.UnknownKey,
             tokens.TokenExpired, tokens.TokenReplayed, tokens.PolicyChanged,
             tokens.WrongCaller, tokens.ScopeMismatch)
    names = {c("x").dbus_name for c in kinds}
    assert len(names) == len(kinds)
    assert all(n.startswith("org.schedcp.Control1.Error.") for n in names)


def test_rotation_keeps_old_tokens_valid_until_expiry(authority: TokenAuthority) -> None:
    old = issue(authority)
    authority.keys.rotate()
    new = issue(authority)
    assert claims_of(new)["kid"] != claims_of(old)["kid"]
    redeem(authority, old)
    redeem(authority, new)
    # A token of the retired key, presented while still unexpired, is valid...
    late = issue(authority)
    authority.keys.rotate()
    soon = time.time() + authority.keys.lifetime / 2
    assert authority.check(late, now=soon)["kid"] == claims_of(late)["kid"]
    # ...and past the retired key's grace period its tokens are no longer trusted.
    with pytest.raises(tokens.UnknownKey):
        redeem(authority, late, now=time.time() + 2 * authority.keys.lifetime)
    assert [k["retired"] is None for k in authority.keys.public_keys()] == [False, False, True]


def test_keys_are_root_only_and_public_keys_exported(authority: TokenAuthority,
                                                     tmp_path: Path) -> None:
    keydir = authority.keys.dir
    assert keydir.stat().st_mode & 0o077 == 0
    private = list(keydir.glob("*.key"))
    assert private and all(p.stat().st_mode & 0o777 == 0o600 for p in private)
    assert all(p.stat().st_uid == 0 for p in private)
    [exported] = authority.keys.public_keys()
    pem = (keydir / f"{exported['kid']}.pub").read_bytes()
    public = serialization.load_pem_public_key(pem)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64encode(raw).decode() == exported["public_key"]
    # The same key pair is used again on the next start.
    assert KeyStore(keydir).current().kid == exported["kid"]  # type: ignore[union-attr]


def test_a_lost_signing_key_is_replaced_not_fatal(tmp_path: Path, caplog) -> None:
    store = StateStore(tmp_path / "db.sqlite", MIGRATIONS)
    try:
        keydir = tmp_path / "keys"
        auth = TokenAuthority(KeyStore(keydir), store)
        old_token = issue(auth)
        auth.keys.rotate()
        kept = issue(auth)
        lost = claims_of(kept)["kid"]
        (keydir / f"{lost}.key").unlink()  # the current signing key is gone
        again = TokenAuthority(KeyStore(keydir), store)
        assert f"token signing key {lost}" in caplog.text
        current = again.keys.current()
        assert current is not None and current.kid not in (lost, claims_of(old_token)["kid"])
        with pytest.raises(tokens.UnknownKey):
            again.check(kept)
        assert again.check(old_token)["kid"] == claims_of(old_token)["kid"]  # still in grace
        assert lost not in json.loads((keydir / "keys.json").read_text())
    finally:
        store.close()


def test_a_damaged_key_index_is_moved_aside(tmp_path: Path, caplog) -> None:
    keydir = tmp_path / "keys"
    first = KeyStore(keydir).current()
    (keydir / "keys.json").write_text("{ not json")
    second = KeyStore(keydir).current()
    assert first is not None and second is not None and second.kid != first.kid
    assert [p.name.startswith("keys.json.damaged-") for p in keydir.glob("keys.json.*")] == [True]
    assert "is unreadable" in caplog.text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.builds(
    lambda a, b, c: f"{a}.{b}.{c}", st.sampled_from(["schedcp1", "x"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=200),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=100))))
def test_decode_never_crashes(text: str) -> None:
    try:
        tokens.decode(text)
    except tokens.InvalidToken as err:
        assert str(err)


@pytest.mark.parametrize("nested", ["[" * 6000, '{"a":' * 1200])
def test_deeply_nested_payload_is_invalid_not_a_crash(nested: str) -> None:
    # Fits in 8 KiB, but json.loads recurses once per level (RecursionError).
    token = f"schedcp1.{_b64(nested.encode())}.AAAA"
    assert len(token) <= tokens.MAX_TOKEN_BYTES
    with pytest.raises(tokens.InvalidToken, match="nested too deeply"):
        tokens.decode(token)


_CLAIM_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                          st.text(max_size=20), st.lists(st.integers(), max_size=3),
                          st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(sorted(tokens._CLAIMS)), _CLAIM_VALUES,
                               min_size=1, max_size=4))
def test_any_edit_of_a_token_is_refused_by_name(authority: TokenAuthority,
                                                changes: dict) -> None:
    token = issue(authority)
    edited = _tamper(token, **changes)
    if edited == token or claims_of(edited) == claims_of(token):
        return
    try:
        redeem(authority, edited, uid=0)
    except (tokens.InvalidToken, tokens.UnknownKey, tokens.TokenTampered,
            tokens.BadSignature) as err:
        assert str(err)
    else:
        raise AssertionError(f"an edited token was accepted: {changes}")
