"""Signed deployment tokens (Ed25519): the verifier's promise to the deployer.

A token says: *this* policy version (digest), for *this* subsystem and
scope, passed *this* verification report, and may be deployed once, by
*this* uid, until *expiry*.  The verifier signs it with the daemon's private
key; ``Deploy`` accepts it only after :meth:`TokenAuthority.redeem` checks
every claim.  Asymmetric keys mean a verifier host can sign for a fleet that
holds only the public key.

Wire format (compact, like a JWS)::

    schedcp1.<base64url(payload JSON)>.<base64url(Ed25519 signature)>

The signature covers the ASCII text ``schedcp1.<payload>``.  The payload
names the key (``kid``) so keys can rotate: an old key keeps verifying the
tokens it signed until they expire.

Every issued payload is kept (table ``token_issued``, until the token would
have expired) so a signature failure can be told apart: a token this daemon
issued whose claims were edited is :class:`TokenTampered` (naming the
claims that changed); any other bad signature is :class:`BadSignature`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlite_utils import Database

from schedcpd import errors
from schedcpd.state import StateStore

_LOGGER = logging.getLogger(__name__)

PREFIX = "schedcp1"
DEFAULT_LIFETIME = 15 * 60.0
MAX_TOKEN_BYTES = 8192
_CLAIMS: dict[str, type | tuple[type, ...]] = {
    "kid": str, "policy_id": str, "policy_digest": str, "subsystem": str, "scope": dict,
    "report_digest": str, "iat": (int, float), "exp": (int, float), "nonce": str, "uid": int,
}


class InvalidToken(errors.SchedcpError):
    """The token is malformed: not ``schedcp1.<payload>.<signature>``, or a claim is bad."""

    name = "InvalidToken"


class BadSignature(errors.SchedcpError):
    """The signature does not verify with the key the token names (forged)."""

    name = "BadSignature"


class TokenTampered(errors.SchedcpError):
    """A token this daemon issued was presented with edited claims."""

    name = "TokenTampered"


class UnknownKey(errors.SchedcpError):
    """The token was signed by a key this daemon does not hold (or no longer trusts)."""

    name = "UnknownKey"


class TokenExpired(errors.SchedcpError):
    """The token's expiry has passed."""

    name = "TokenExpired"


class TokenReplayed(errors.SchedcpError):
    """The token was already used once."""

    name = "TokenReplayed"


class PolicyChanged(errors.SchedcpError):
    """The policy as stored no longer matches the digest that was verified."""

    name = "PolicyChanged"


class WrongCaller(errors.SchedcpError):
    """The token was issued to another uid."""

    name = "WrongCaller"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest_of(data: str | bytes) -> str:
    """SHA-256 hex digest (of a policy document or a report)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def key_id(public: Ed25519PublicKey) -> str:
    """A key's id: the first 16 hex digits of the SHA-256 of its raw public bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class _Key:
    kid: str
    private: Ed25519PrivateKey | None
    public: Ed25519PublicKey
    created: float
    retired: float | None


class KeyStore:
    """Ed25519 keys in ``<dir>``: ``<kid>.key`` (private, 0600) and ``keys.json``."""

    def __init__(self, directory: Path, lifetime: float = DEFAULT_LIFETIME) -> None:
        self.dir = directory
        self.lifetime = lifetime
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self._index = self.dir / "keys.json"
        self._keys: dict[str, _Key] = {}
        self._load()
        if self.current() is None:
            self.rotate()
        for key in self._keys.values():
            self._export(key)

    def _load(self) -> None:
        """Load the keys the index names; a damaged one is skipped, never fatal.

        The daemon must start even then (its start-up restores the kernel
        state a crash left behind): tokens signed by a lost key are refused
        as ``UnknownKey``, and a lost signing key is replaced by a new one.
        """
        if not self._index.exists():
            return
        try:
            index = json.loads(self._index.read_text())
            if not isinstance(index, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            aside = self._index.with_name(f"keys.json.damaged-{int(time.time())}")
            os.replace(self._index, aside)
            _LOGGER.error("token key index %s is unreadable (%s): moved to %s; tokens "
                          "issued before are refused from now on", self._index, err, aside)
            return
        for kid, meta in index.items():
            path = self.dir / f"{kid}.key"
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(private, Ed25519PrivateKey):
                    raise ValueError("not an Ed25519 private key")
                self._keys[kid] = _Key(kid, private, private.public_key(),
                                       float(meta["created"]), meta.get("retired"))
            except (OSError, ValueError, TypeError, KeyError) as err:
                _LOGGER.error("token signing key %s (%s) cannot be loaded: %s; tokens it "
                              "signed are refused (UnknownKey)", kid, path, err)
        if len(self._keys) < len(index):
            self._save_index()

    def _save_index(self) -> None:
        data = {k.kid: {"created": k.created, "retired": k.retired} for k in self._keys.values()}
        tmp = self._index.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._index)

    def _export(self, key: _Key) -> None:
        """Write ``<kid>.pub`` (PEM, world-readable) for hosts that only check tokens."""
        path = self.dir / f"{key.kid}.pub"
        if not path.exists():
            path.write_bytes(key.public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            os.chmod(path, 0o644)

    def current(self) -> _Key | None:
        """The signing key: the newest key not retired."""
        live = [k for k in self._keys.values() if k.retired is None]
        return max(live, key=lambda k: k.created) if live else None

    def rotate(self) -> str:
        """Make a new signing key; the old one verifies its tokens until they expire."""
        now = time.time()
        for key in self._keys.values():
            if key.retired is None:
                key.retired = now
        private = Ed25519PrivateKey.generate()
        kid = key_id(private.public_key())
        path = self.dir / f"{kid}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        self._keys[kid] = _Key(kid, private, private.public_key(), now, None)
        self._save_index()
        self._export(self._keys[kid])
        _LOGGER.info("new token signing key %s", kid)
        return kid

    def verifying_key(self, kid: str, now: float) -> Ed25519PublicKey | None:
        """The public key ``kid`` if it may still verify tokens at ``now``."""
        key = self._keys.get(kid)
        if key is None:
            return None
        if key.retired is not None and now > key.retired + self.lifetime:
            return None
        return key.public

    def public_keys(self) -> list[dict[str, Any]]:
        """Every key's id, raw public key (base64) and dates, for export."""
        return [
            {"kid": k.kid, "created": k.created, "retired": k.retired,
             "public_key": base64.b64encode(k.public.public_bytes(
                 serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()}
            for k in sorted(self._keys.values(), key=lambda k: k.created)
        ]


def decode(token: str) -> tuple[dict[str, Any], bytes, bytes]:
    """Split and parse a token without verifying it: (claims, signed bytes, signature).

    Raises :class:`InvalidToken` naming what is wrong.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("token is not a string of at most 8 KiB")
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise InvalidToken(f"token must be {PREFIX}.<payload>.<signature>")
    try:
        payload = _unb64(parts[1])
        signature = _unb64(parts[2])
        claims = json.loads(payload)
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise InvalidToken(f"token is not valid base64url/JSON: {err}") from err
    except RecursionError as err:  # e.g. 6000 nested arrays: json.loads recurses
        raise InvalidToken("token payload is nested too deeply to be a claims object") from err
    if not isinstance(claims, dict):
        raise InvalidToken("token payload is not a JSON object")
    for name, kind in _CLAIMS.items():
        value = claims.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidToken(f"token claim {name!r} is missing or of the wrong type")
    return claims, f"{parts[0]}.{parts[1]}".encode(), signature


class TokenAuthority:
    """Issues tokens and redeems them exactly once (nonces kept in SQLite)."""

    def __init__(self, keys: KeyStore, store: StateStore) -> None:
        self.keys = keys
        self._store = store

    async def issue(self, *, policy_id: str, policy_digest: str, subsystem: str,
                    scope: dict[str, Any], report_digest: str, uid: int,
                    lifetime: float | None = None, now: float | None = None) -> str:
        """Sign a token for one deployment of a verified policy by ``uid``; record it."""
        key = self.keys.current()
        assert key is not None and key.private is not None
        issued = time.time() if now is None else now
        claims = {
            "kid": key.kid, "policy_id": policy_id, "policy_digest": policy_digest,
            "subsystem": subsystem, "scope": scope, "report_digest": report_digest,
            "iat": issued, "exp": issued + (lifetime or self.keys.lifetime),
            "nonce": secrets.token_hex(16), "uid": uid,
        }
        payload = json.dumps(claims, sort_keys=True)
        signed = f"{PREFIX}.{_b64(payload.encode())}"
        grace = self.keys.lifetime

        def record(db: Database) -> None:
            with db.conn:
                db.execute("DELETE FROM token_issued WHERE exp < ?", [time.time() - grace])
                db.execute("INSERT INTO token_issued (nonce, payload, exp) VALUES (?, ?, ?)",
                           [claims["nonce"], payload, claims["exp"]])

        await self._store.run(record)
        return f"{signed}.{_b64(key.private.sign(signed.encode()))}"

    def _signature_error(self, claims: dict[str, Any]) -> errors.SchedcpError:
        """Tampered (an issued token with edited claims) or forged (anything else)."""
        def query(db: Database) -> str | None:
            row = db.execute("SELECT payload FROM token_issued WHERE nonce = ?",
                             [claims["nonce"]]).fetchone()
            return row[0] if row else None

        issued = self._store.run_sync(query)
        if issued is not None:
            original = json.loads(issued)
            changed = sorted(k for k in set(original) | set(claims)
                             if original.get(k) != claims.get(k))
            if changed:
                return TokenTampered(f"token {claims['nonce'][:8]} was issued here, but its "
                                     f"claims were changed: {', '.join(changed)}")
        return BadSignature(f"token signature does not verify with key {claims['kid']} "
                            "(forged)")

    def check(self, token: str, now: float | None = None) -> dict[str, Any]:
        """Verify form, signature and expiry (not the nonce); return the claims."""
        claims, signed, signature = decode(token)
        now = time.time() if now is None else now
        public = self.keys.verifying_key(claims["kid"], now)
        if public is None:
            raise UnknownKey(f"token was signed by key {claims['kid']}, which this daemon "
                             "does not trust")
        try:
            public.verify(signature, signed)
        except InvalidSignature as err:
            raise self._signature_error(claims) from err
        if now >= claims["exp"]:
            raise TokenExpired(f"token expired {now - claims['exp']:.0f} s ago")
        return claims

    async def redeem(self, token: str, *, uid: int, stored_digest: str | None,
                     now: float | None = None) -> dict[str, Any]:
        """Accept ``token`` for deployment by ``uid`` once; return its claims.

        ``stored_digest`` is the digest of the policy as stored now (None
        when it is gone).  Checks, in order: form, signature, expiry, caller,
        policy digest, and finally consumes the nonce (a second use fails).
        """
        claims = self.check(token, now)
        if uid != 0 and uid != claims["uid"]:
            raise WrongCaller(f"token was issued to uid {claims['uid']}, not {uid}")
        if stored_digest != claims["policy_digest"]:
            raise PolicyChanged(f"policy {claims['policy_id']} changed since it was verified")
        nonce, exp = claims["nonce"], claims["exp"]

        def consume(db: Database) -> bool:
            with db.conn:
                db.execute("DELETE FROM token_nonces WHERE exp < ?", [time.time()])
                cur = db.execute("INSERT OR IGNORE INTO token_nonces (nonce, used, exp) "
                                 "VALUES (?, ?, ?)", [nonce, time.time(), exp])
                return cur.rowcount == 1

        if not await self._store.run(consume):
            raise TokenReplayed("token was already used")
        return claims


def migrate_nonces(db: Database) -> None:
    """Schema: used token nonces, kept until their token would have expired."""
    db.execute("CREATE TABLE token_nonces (nonce TEXT PRIMARY KEY, used REAL, exp REAL)")


def migrate_issued_tokens(db: Database) -> None:
    """Schema: the payload of every issued token (tells tampered from forged)."""
    db.execute("CREATE TABLE token_issued (nonce TEXT PRIMARY KEY, payload TEXT, exp REAL)")
