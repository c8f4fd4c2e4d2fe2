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

A token for a policy that runs an artifact (a T2 policy's BPF object) also
has the claim ``artifact``: ``{"object_sha256", "btf_sha256"}``, the digest
of the object the verifier loaded into the kernel's BPF verifier and of the
kernel BTF it was loaded against.  The deploying subsystem compares them with
the object it is about to load and with the running kernel's BTF
(``ObjectMismatch``); the token layer only checks their form.

A token may be signed by this daemon's key or by a *trusted verifier key*
(another daemon's public key, :mod:`schedcpd.keys`); any other key is
:class:`UnknownKey`, and a key on the revocation list is :class:`KeyRevoked`
whoever holds or trusts it.

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
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature

from schedcpd import errors
from schedcpd.keys import DEFAULT_LIFETIME, KeyStore, key_id
from schedcpd.safety_events import NO_EVENTS, SafetyEvents

if TYPE_CHECKING:  # annotations only: schedcpctl decodes tokens without sqlite-utils' import
    from sqlite_utils import Database

    from schedcpd.state import StateStore

__all__ = ["DEFAULT_LIFETIME", "PREFIX", "KeyStore", "TokenAuthority", "decode", "digest_of",
           "key_id"]

PREFIX = "schedcp1"
MAX_TOKEN_BYTES = 8192
_CLAIMS: dict[str, type | tuple[type, ...]] = {
    "kid": str, "policy_id": str, "policy_digest": str, "subsystem": str, "scope": dict,
    "report_digest": str, "iat": (int, float), "exp": (int, float), "nonce": str, "uid": int,
}
ARTIFACT_CLAIMS = ("object_sha256", "btf_sha256")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    """The token was signed by a key this daemon neither holds nor trusts (or no longer)."""

    name = "UnknownKey"


class KeyRevoked(errors.SchedcpError):
    """The token was signed by a key on the revocation list (``[verifier] revoked_keys_file``)."""

    name = "KeyRevoked"


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


class ScopeMismatch(errors.SchedcpError):
    """The token's subsystem or scope is not those of the policy being deployed.

    The verifier signs the scope it checked (the policy's groups); a token
    signed with this daemon's key but naming another scope (a key leaked to
    a tool, a bug in an issuer) would deploy what nobody verified at that
    scope, so it is refused.
    """

    name = "ScopeMismatch"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest_of(data: str | bytes) -> str:
    """SHA-256 hex digest (of a policy document or a report)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


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
    artifact = claims.get("artifact")
    if artifact is not None and not (
            isinstance(artifact, dict) and set(artifact) == set(ARTIFACT_CLAIMS)
            and all(isinstance(v, str) and _SHA256.match(v) for v in artifact.values())):
        raise InvalidToken(f"token claim 'artifact' must be {{{', '.join(ARTIFACT_CLAIMS)}}} "
                           "as SHA-256 hex digests")
    return claims, f"{parts[0]}.{parts[1]}".encode(), signature


class TokenAuthority:
    """Issues tokens and redeems them exactly once (nonces kept in SQLite)."""

    def __init__(self, keys: KeyStore, store: StateStore) -> None:
        self.keys = keys
        self._store = store
        self.events: SafetyEvents = NO_EVENTS
        """Told of every token issued and redeemed (the daemon's metrics)."""

    async def issue(self, *, policy_id: str, policy_digest: str, subsystem: str,
                    scope: dict[str, Any], report_digest: str, uid: int,
                    lifetime: float | None = None, now: float | None = None,
                    artifact: dict[str, str] | None = None) -> str:
        """Sign a token for one deployment of a verified policy by ``uid``; record it.

        ``lifetime`` may shorten the token's life, never lengthen it past the
        key store's: a retired key is pruned one ``keys.lifetime`` after its
        retirement, and must outlive every token it signed.
        """
        key = self.keys.current()
        assert key is not None and key.private is not None
        if lifetime is not None and not 0 < lifetime <= self.keys.lifetime:
            raise errors.InvalidArgument(
                f"a token lifetime must be in (0, {self.keys.lifetime:g}] s, got {lifetime:g}")
        issued = self.keys.clock() if now is None else now
        exp = issued + (lifetime or self.keys.lifetime)
        claims: dict[str, Any] = {
            "kid": key.kid, "policy_id": policy_id, "policy_digest": policy_digest,
            "subsystem": subsystem, "scope": scope, "report_digest": report_digest,
            "iat": issued, "exp": exp,
            "nonce": secrets.token_hex(16), "uid": uid,
        }
        if artifact is not None:
            claims["artifact"] = {k: artifact[k] for k in ARTIFACT_CLAIMS}
        payload = json.dumps(claims, sort_keys=True)
        signed = f"{PREFIX}.{_b64(payload.encode())}"
        # Sign and note it before any await: a rotation in between would
        # destroy the private half, and prune a public half thought unused.
        token = f"{signed}.{_b64(key.private.sign(signed.encode()))}"
        self.keys.note_signed(key.kid, exp)
        grace = self.keys.lifetime

        def record(db: Database) -> None:
            with db.conn:
                db.execute("DELETE FROM token_issued WHERE exp < ?", [time.time() - grace])
                db.execute("INSERT INTO token_issued (nonce, payload, exp) VALUES (?, ?, ?)",
                           [claims["nonce"], payload, claims["exp"]])

        await self._store.run(record)
        self.events.token_issued(subsystem)
        return token

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
        """Verify form, key (not revoked, held or trusted), signature and expiry (not the
        nonce); return the claims."""
        claims, signed, signature = decode(token)
        now = self.keys.clock() if now is None else now
        if self.keys.is_revoked(claims["kid"]):
            raise KeyRevoked(f"token was signed by key {claims['kid']}, which is revoked "
                             f"(listed in {self.keys.revoked_file}, or the list is unreadable)")
        public = self.keys.verifying_key(claims["kid"], now)
        if public is None:
            where = self.keys.trusted_dir
            raise UnknownKey(f"token was signed by key {claims['kid']}, which is neither this "
                             "daemon's key nor a trusted verifier key"
                             + (f" (none in {where} is it)" if where is not None else ""))
        try:
            public.verify(signature, signed)
        except InvalidSignature as err:
            raise self._signature_error(claims) from err
        if now >= claims["exp"]:
            raise TokenExpired(f"token expired {now - claims['exp']:.0f} s ago")
        return claims

    def validate(self, token: str, *, uid: int, stored_digest: str | None,
                 subsystem: str, scope: dict[str, Any] | None,
                 now: float | None = None) -> dict[str, Any]:
        """Every check of :meth:`redeem` but the nonce; return the claims.

        ``stored_digest`` is the digest of the policy as stored now (None
        when it is gone); ``subsystem`` and ``scope`` are those of the policy
        being deployed, as the verifier derives them from its document.
        Checks, in order: form, signature, expiry, caller, policy digest,
        subsystem and scope.
        """
        claims = self.check(token, now)
        if uid != 0 and uid != claims["uid"]:
            raise WrongCaller(f"token was issued to uid {claims['uid']}, not {uid}")
        if stored_digest != claims["policy_digest"]:
            raise PolicyChanged(f"policy {claims['policy_id']} changed since it was verified")
        if claims["subsystem"] != subsystem:
            raise ScopeMismatch(f"token is for subsystem {claims['subsystem']!r}, but policy "
                                f"{claims['policy_id'][:12]} belongs to {subsystem!r}")
        if claims["scope"] != scope:
            raise ScopeMismatch(
                f"token scope {json.dumps(claims['scope'], sort_keys=True)} is not the scope "
                f"of policy {claims['policy_id'][:12]} as verified "
                f"({json.dumps(scope, sort_keys=True)})")
        return claims

    async def redeem(self, token: str, *, uid: int, stored_digest: str | None,
                     subsystem: str, scope: dict[str, Any] | None,
                     now: float | None = None) -> dict[str, Any]:
        """Accept ``token`` for deployment by ``uid`` once; return its claims.

        :meth:`validate`, then the nonce is consumed (a second use fails).
        """
        claims = self.validate(token, uid=uid, stored_digest=stored_digest,
                               subsystem=subsystem, scope=scope, now=now)
        nonce, exp = claims["nonce"], claims["exp"]

        def consume(db: Database) -> bool:
            with db.conn:
                db.execute("DELETE FROM token_nonces WHERE exp < ?", [time.time()])
                cur = db.execute("INSERT OR IGNORE INTO token_nonces (nonce, used, exp) "
                                 "VALUES (?, ?, ?)", [nonce, time.time(), exp])
                return cur.rowcount == 1

        if not await self._store.run(consume):
            raise TokenReplayed("token was already used")
        self.events.token_redeemed(subsystem)
        return claims


def migrate_nonces(db: Database) -> None:
    """Schema: used token nonces, kept until their token would have expired."""
    db.execute("CREATE TABLE token_nonces (nonce TEXT PRIMARY KEY, used REAL, exp REAL)")


def migrate_issued_tokens(db: Database) -> None:
    """Schema: the payload of every issued token (tells tampered from forged)."""
    db.execute("CREATE TABLE token_issued (nonce TEXT PRIMARY KEY, payload TEXT, exp REAL)")
