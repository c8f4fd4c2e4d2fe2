"""Key rotation destroys retired private keys and prunes public keys nobody needs.

The clock is injected: hundreds of rotations run through simulated hours
without sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schedcpd import tokens
from schedcpd.keys import KeyStore, key_id
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import TokenAuthority

LIFETIME = 900.0
DIGEST = "ab" * 32
SCOPE = {"groups": ["batch"]}


class Clock:
    """A settable wall clock (seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    db = StateStore(tmp_path / "db.sqlite", MIGRATIONS)
    yield db
    db.close()


def _issue(auth: TokenAuthority, lifetime: float | None = None) -> str:
    return asyncio.run(auth.issue(policy_id=DIGEST, policy_digest=DIGEST, subsystem="scheduler",
                                  scope=SCOPE, report_digest="cd" * 32, uid=1000,
                                  lifetime=lifetime))


def _redeem(auth: TokenAuthority, token: str) -> dict:
    return asyncio.run(auth.redeem(token, uid=1000, stored_digest=DIGEST,
                                   subsystem="scheduler", scope=SCOPE))


def _files(keydir: Path) -> dict[str, set[str]]:
    return {kind: {p.stem for p in keydir.glob(f"*.{kind}")} for kind in ("key", "pub")}


def test_rotation_destroys_the_retired_private_key(tmp_path: Path, store: StateStore) -> None:
    clock = Clock()
    keys = KeyStore(tmp_path / "keys", LIFETIME, clock)
    auth = TokenAuthority(keys, store)
    first = keys.current()
    assert first is not None
    token = _issue(auth)
    keys.rotate()
    # Gone from memory (the object a caller may still hold) and from disk.
    assert first.private is None
    current = keys.current()
    assert current is not None and current.kid != first.kid
    assert _files(keys.dir)["key"] == {current.kid}
    # Its public half is still on disk and in the export, and still verifies.
    assert first.kid in _files(keys.dir)["pub"]
    assert [k["kid"] for k in keys.public_keys()] == [first.kid, current.kid]
    assert auth.check(token)["kid"] == first.kid
    # The same after a restart: the retired key is loaded from its public file.
    again = KeyStore(tmp_path / "keys", LIFETIME, clock)
    assert again.held() == [first.kid, current.kid]
    assert TokenAuthority(again, store).check(token)["kid"] == first.kid


def test_a_retired_key_verifies_until_its_tokens_expire_then_is_pruned(
        tmp_path: Path, store: StateStore) -> None:
    clock = Clock()
    keys = KeyStore(tmp_path / "keys", LIFETIME, clock)
    auth = TokenAuthority(keys, store)
    old = keys.current()
    assert old is not None
    token = _issue(auth)  # expires at now + LIFETIME
    clock.now += 600
    keys.rotate()
    clock.now += 299  # one second before the token's expiry
    assert _redeem(auth, _issue(auth))["kid"] != old.kid  # the new key signs now
    assert auth.check(token)["kid"] == old.kid
    keys.rotate()  # a rotation while the old key's token is still valid keeps it
    assert old.kid in keys.held() and old.kid in _files(keys.dir)["pub"]
    clock.now += 2  # the token has expired: its key is trusted no more...
    with pytest.raises(tokens.UnknownKey):
        auth.check(token)
    assert old.kid in keys.held()
    keys.rotate()  # ...and the next rotation prunes it
    assert old.kid not in keys.held()
    assert old.kid not in _files(keys.dir)["pub"] | _files(keys.dir)["key"]
    with pytest.raises(tokens.UnknownKey) as info:
        _redeem(auth, token)
    assert info.value.dbus_name == "org.schedcp.Control1.Error.UnknownKey"
    assert old.kid not in json.loads((keys.dir / "keys.json").read_text())


def test_many_rotations_keep_files_and_keys_bounded(tmp_path: Path, store: StateStore) -> None:
    clock = Clock()
    keys = KeyStore(tmp_path / "keys", LIFETIME, clock)
    auth = TokenAuthority(keys, store)
    step = 60.0
    # Retired keys that signed a token live at most LIFETIME after retiring;
    # those that signed nothing are pruned at once.
    bound = int(LIFETIME / step) + 2
    live_tokens: list[tuple[float, str]] = []
    most = 0
    for n in range(500):
        if n % 3 == 0:  # every third key signs a token before it is retired
            live_tokens.append((clock.now + LIFETIME, _issue(auth)))
        keys.rotate()
        clock.now += step
        held = keys.held()
        files = _files(keys.dir)
        most = max(most, len(held))
        assert len(held) <= bound, (n, len(held))
        assert files["key"] == {keys.current().kid}  # type: ignore[union-attr]
        assert files["pub"] == set(held)
        assert len(list(keys.dir.iterdir())) == len(held) + 2  # + keys.json and the .key
        # Every token not yet expired still verifies; older ones are refused by name.
        for exp, token in live_tokens[-bound:]:
            if clock.now < exp:
                assert auth.check(token)["kid"] in held
            else:
                with pytest.raises((tokens.TokenExpired, tokens.UnknownKey)):
                    auth.check(token)
    assert most >= LIFETIME / step / 3 - 1  # the bound is not met by pruning too early
    for _exp, token in live_tokens[:-bound]:
        with pytest.raises(tokens.UnknownKey):
            auth.check(token)


def test_rotations_without_tokens_hold_one_key(tmp_path: Path, store: StateStore) -> None:
    # A fuzz run rotated ~870 times in minutes and kept 1745 key files.
    keys = KeyStore(tmp_path / "keys", LIFETIME, Clock())
    for _ in range(500):
        keys.rotate()
    assert len(keys.held()) == 1
    assert {p.suffix for p in keys.dir.iterdir()} == {".key", ".pub", ".json"}
    assert len(list(keys.dir.iterdir())) == 3


def test_a_token_may_not_outlive_its_key(tmp_path: Path, store: StateStore) -> None:
    auth = TokenAuthority(KeyStore(tmp_path / "keys", LIFETIME, Clock()), store)
    with pytest.raises(tokens.errors.InvalidArgument):
        _issue(auth, lifetime=LIFETIME + 1)
    assert _redeem(auth, _issue(auth, lifetime=LIFETIME / 2))


def _pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def test_an_old_store_loses_its_retired_private_keys_at_load(tmp_path: Path) -> None:
    # A key directory as earlier versions left it: every retired private key
    # on disk, no public files, no signed_until.
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o700)
    clock = Clock()
    made = [Ed25519PrivateKey.generate() for _ in range(4)]
    kids = [key_id(k.public_key()) for k in made]
    index = {}
    for i, (kid, private) in enumerate(zip(kids, made, strict=True)):
        (keydir / f"{kid}.key").write_bytes(_pem(private))
        (keydir / f"{kid}.key").chmod(0o600)
        retired = None if i == 3 else clock.now - (3 - i) * LIFETIME * 0.75
        index[kid] = {"created": clock.now - 10_000 + i, "retired": retired}
    (keydir / "keys.json").write_text(json.dumps(index))
    keys = KeyStore(keydir, LIFETIME, clock)
    # Retired 2.25, 1.5 and 0.75 lifetimes ago: only the last is within its grace.
    assert keys.held() == kids[2:]
    assert _files(keydir) == {"key": {kids[3]}, "pub": set(kids[2:])}
    assert keys.current().kid == kids[3]  # type: ignore[union-attr]
    assert keys.verifying_key(kids[2], clock.now) is not None
