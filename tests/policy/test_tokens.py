"""Deployment tokens: every way a token can be wrong is refused with its own error."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
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
    return auth.issue(**args)  # type: ignore[arg-type]


def redeem(auth: TokenAuthority, token: str, uid: int = 1000, digest: str | None = DIGEST,
           now: float | None = None) -> dict:
    return asyncio.run(auth.redeem(token, uid=uid, stored_digest=digest, now=now))


def test_good_token_redeems_once(authority: TokenAuthority) -> None:
    token = issue(authority)
    claims = redeem(authority, token)
    assert claims["policy_digest"] == DIGEST and claims["uid"] == 1000
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


def _tamper(token: str, **changes: object) -> str:
    prefix, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{new}.{sig}"


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda a, o: _tamper(issue(a), uid=0), tokens.InvalidToken),
        (lambda a, o: _tamper(issue(a), exp=4e9), tokens.InvalidToken),
        (lambda a, o: issue(a)[:-4] + "AAAA", tokens.InvalidToken),
        (lambda a, o: "schedcp1.e30.e30", tokens.InvalidToken),
        (lambda a, o: "garbage", tokens.InvalidToken),
        (lambda a, o: issue(o), tokens.UnknownKey),
        (lambda a, o: issue(a, lifetime=0.001, now=1000.0), tokens.TokenExpired),
    ],
    ids=["tampered-uid", "tampered-expiry", "forged-signature", "missing-claims", "garbage",
         "other-key", "expired"],
)
def test_bad_tokens_are_refused(authority: TokenAuthority, tmp_path: Path, make, error) -> None:
    other_store = StateStore(tmp_path / "other.sqlite", MIGRATIONS)
    other = TokenAuthority(KeyStore(tmp_path / "other-keys"), other_store)
    try:
        with pytest.raises(error):
            redeem(authority, make(authority, other))
    finally:
        other_store.close()


def test_changed_policy_and_other_uid(authority: TokenAuthority) -> None:
    with pytest.raises(tokens.PolicyChanged):
        redeem(authority, issue(authority), digest="ef" * 32)
    with pytest.raises(tokens.PolicyChanged):
        redeem(authority, issue(authority), digest=None)
    with pytest.raises(tokens.WrongCaller):
        redeem(authority, issue(authority), uid=1001)


def test_errors_have_distinct_dbus_names() -> None:
    names = {c.name for c in (tokens.InvalidToken, tokens.UnknownKey, tokens.TokenExpired,
                              tokens.TokenReplayed, tokens.PolicyChanged, tokens.WrongCaller)}
    assert len(names) == 6


def test_rotation_keeps_old_tokens_valid_until_expiry(authority: TokenAuthority) -> None:
    old = issue(authority)
    authority.keys.rotate()
    new = issue(authority)
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[1] + "=="))["kid"] != \
        json.loads(base64.urlsafe_b64decode(old.split(".")[1] + "=="))["kid"]
    redeem(authority, old)
    redeem(authority, new)
    # Past the old key's grace period its tokens are no longer trusted.
    late = issue(authority)
    authority.keys.rotate()
    import time

    with pytest.raises((tokens.UnknownKey, tokens.TokenExpired)):
        redeem(authority, late, now=time.time() + 2 * authority.keys.lifetime)


def test_private_keys_are_root_only(authority: TokenAuthority) -> None:
    for path in authority.keys.dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert authority.keys.dir.stat().st_mode & 0o077 == 0


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
