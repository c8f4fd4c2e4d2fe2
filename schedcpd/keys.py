"""The verifier's Ed25519 signing keys: one current key, retired public halves, rotation.

Files in ``<dir>`` (0700, root):

- ``<kid>.key`` — the *current* private key (PEM, 0600).  Exactly one exists
  while the store is consistent: at rotation the retired key's private file
  is deleted and its in-memory private half dropped, so a retired key can
  never sign again.
- ``<kid>.pub`` — each key's public half (PEM, 0644), for hosts that only
  check tokens.  A retired key's public half is kept while tokens it signed
  may still be redeemed: until the latest expiry of a token it signed
  (``signed_until``), which is at most one token lifetime after its
  retirement (no token outlives ``lifetime``).  Then it is pruned, from
  disk and memory, at the next rotation or start, and its tokens are
  refused as ``UnknownKey``.  A key retired before it signed anything is
  pruned at once: rotating without issuing tokens holds one key.
- ``keys.json`` — the index: ``{kid: {"created", "retired", "signed_until"}}``.
  An index written before ``signed_until`` was kept counts such a key's
  tokens as valid for one lifetime after its retirement.

Rotation is crash-safe in this order: write the new private key, save the
index naming it current and the old key retired, then destroy the old
private file.  A store loaded with retired private files left over (a crash
in between, or a store written before retired keys were destroyed) has them
deleted at load, and expired public halves pruned.

**Trusted verifier keys** (``trusted_dir``, ``[verifier] trusted_keys_dir``,
default ``/etc/schedcp/trusted-keys.d``): public halves (PEM, ``*.pub``) of
*other* daemons' keys, whose tokens this daemon accepts as its own — a host
whose kernel or resources cannot run the verifier's micro-VM deploys what a
verifier host verified and signed.  A key's id is derived from its bytes,
never from the file name (a file named ``<16 hex>.pub`` that holds another
key is refused, with the reason, in :attr:`KeyStore.trusted_errors`).  The
directory is re-read when its modification time changes, so adding or
removing a file takes effect at the next token check.  Trusted keys never
sign: they only verify, for as long as their file is there.  Several files
may be there at once: a verifier host that rotates its key hands out the new
public half while the old one still verifies the tokens it signed.

**Revoked keys** (``revoked_file``, ``[verifier] revoked_keys_file``, default
``/etc/schedcp/revoked-keys``): one key per line, as its 16-hex key id or its
64-hex fingerprint (the SHA-256 of the raw public key, whose first 16 digits
are the id); ``#`` starts a comment.  A revoked key verifies nothing — a
trusted key and this daemon's own alike — even while its file is still in
``trusted_dir``: tokens it signed are refused as ``KeyRevoked``.  The file is
re-read when it changes; a line that is no key id is reported in
:attr:`KeyStore.revoked_errors` and ignored.  An unreadable file (it exists,
but cannot be read) revokes every trusted key, failing closed.

The clock is a parameter so tests can rotate hundreds of times through
simulated hours without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_LOGGER = logging.getLogger(__name__)

DEFAULT_LIFETIME = 15 * 60.0
DEFAULT_TRUSTED_DIR = Path("/etc/schedcp/trusted-keys.d")
DEFAULT_REVOKED_FILE = Path("/etc/schedcp/revoked-keys")
_KID_NAME = re.compile(r"^[0-9a-f]{16}$")
_REVOKED_LINE = re.compile(r"^(?:[0-9a-f]{16}|[0-9a-f]{64})$")
ALL_TRUSTED = "*"
"""In :meth:`KeyStore.revoked`: the revocation list is unreadable, no trusted key counts."""

Clock = Callable[[], float]


def fingerprint(public: Ed25519PublicKey) -> str:
    """A key's fingerprint: the SHA-256 (hex) of its raw public bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def key_id(public: Ed25519PublicKey) -> str:
    """A key's id: the first 16 hex digits of its fingerprint."""
    return fingerprint(public)[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo): the form ``trusted_dir`` reads."""
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class Key:
    """One key: ``private`` is None once it is retired (its private half destroyed)."""

    kid: str
    private: Ed25519PrivateKey | None
    public: Ed25519PublicKey
    created: float
    retired: float | None
    signed_until: float | None = 0.0
    """The latest expiry of a token it signed (0: none); None: not recorded (older index)."""

    def trusted_until(self, lifetime: float) -> float:
        """Until when tokens of this key may be redeemed (infinity while it is current)."""
        if self.retired is None:
            return float("inf")
        if self.signed_until is None:
            return self.retired + lifetime
        return min(self.signed_until, self.retired + lifetime)


class KeyStore:
    """Ed25519 keys in ``<dir>``; see the module docstring for the files."""

    def __init__(self, directory: Path, lifetime: float = DEFAULT_LIFETIME,
                 clock: Clock = time.time, trusted_dir: Path | None = None,
                 revoked_file: Path | None = None) -> None:
        self.dir = directory
        self.trusted_dir = trusted_dir
        """Public keys of other verifiers whose tokens are accepted (None: none)."""
        self._trusted: dict[str, Ed25519PublicKey] = {}
        self._trusted_files: dict[str, str] = {}
        self._trusted_stamp: tuple[int, tuple[str, ...]] | None = None
        self.trusted_errors: dict[str, str] = {}
        """File name -> why a file in ``trusted_dir`` was not loaded."""
        self.revoked_file = revoked_file
        """The revocation list (None: no key is revoked)."""
        self._revoked: frozenset[str] = frozenset()
        self._revoked_stamp: tuple[int, int, int] | None = None
        self.revoked_errors: dict[str, str] = {}
        """``<file>:<line>`` -> why a line of ``revoked_file`` revokes nothing."""
        self.lifetime = lifetime
        """The longest a token may live; a retired key verifies this long after retiring."""
        self.clock = clock
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self._index = self.dir / "keys.json"
        self._keys: dict[str, Key] = {}
        self._load()
        if self.current() is None:
            self.rotate()
        for key in self._keys.values():
            self._export(key)

    # -- files ----------------------------------------------------------

    def _private_path(self, kid: str) -> Path:
        return self.dir / f"{kid}.key"

    def _public_path(self, kid: str) -> Path:
        return self.dir / f"{kid}.pub"

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
            aside = self._index.with_name(f"keys.json.damaged-{int(self.clock())}")
            os.replace(self._index, aside)
            _LOGGER.error("token key index %s is unreadable (%s): moved to %s; tokens "
                          "issued before are refused from now on", self._index, err, aside)
            return
        for kid, meta in index.items():
            try:
                retired, until = meta.get("retired"), meta.get("signed_until")
                key = self._read_key(kid, float(meta["created"]),
                                     None if retired is None else float(retired))
                key.signed_until = None if until is None else float(until)
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
                _LOGGER.error("token signing key %s (in %s) cannot be loaded: %s; tokens it "
                              "signed are refused (UnknownKey)", kid, self.dir, err)
                continue
            self._keys[kid] = key
        changed = len(self._keys) < len(index)
        changed |= self._prune(self.clock())
        if changed:
            self._save_index()
        self._destroy_retired_private()

    def _read_key(self, kid: str, created: float, retired: float | None) -> Key:
        """A current key from its private file; a retired one from its public file."""
        if retired is None:
            private = serialization.load_pem_private_key(
                self._private_path(kid).read_bytes(), password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 private key")
            public = private.public_key()
        else:
            private = None
            path = self._public_path(kid)
            if not path.exists() and self._private_path(kid).exists():
                # A store from before retired keys were destroyed: derive the
                # public half once; the private file is deleted after the load.
                old = serialization.load_pem_private_key(
                    self._private_path(kid).read_bytes(), password=None)
                if not isinstance(old, Ed25519PrivateKey):
                    raise ValueError("not an Ed25519 private key")
                loaded: Any = old.public_key()
            else:
                loaded = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(loaded, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            public = loaded
        if key_id(public) != kid:
            raise ValueError("the key file holds another key than its name says")
        return Key(kid, private, public, created, retired)

    def _save_index(self) -> None:
        data = {k.kid: {"created": k.created, "retired": k.retired,
                        "signed_until": k.signed_until} for k in self._keys.values()}
        tmp = self._index.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._index)

    def _export(self, key: Key) -> None:
        """Write ``<kid>.pub`` (PEM, world-readable) for hosts that only check tokens."""
        path = self._public_path(key.kid)
        if not path.exists():
            tmp = path.with_suffix(".pub.tmp")
            tmp.write_bytes(key.public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)

    def _destroy_retired_private(self) -> None:
        """Delete the private half of every retired key, on disk and in memory."""
        for key in self._keys.values():
            if key.retired is None:
                continue
            key.private = None
            path = self._private_path(key.kid)
            if path.exists():
                path.unlink()
                _LOGGER.info("destroyed the private half of retired token key %s", key.kid)

    def _prune(self, now: float) -> bool:
        """Forget retired keys whose every token has expired; True if any went."""
        gone = [k for k in self._keys.values() if now > k.trusted_until(self.lifetime)]
        for key in gone:
            del self._keys[key.kid]
            self._public_path(key.kid).unlink(missing_ok=True)
            self._private_path(key.kid).unlink(missing_ok=True)
            _LOGGER.info("pruned token key %s (retired %.0f s ago; every token it signed "
                         "has expired)", key.kid, now - (key.retired or now))
        return bool(gone)

    # -- use ------------------------------------------------------------

    def current(self) -> Key | None:
        """The signing key: the newest key not retired."""
        live = [k for k in self._keys.values() if k.retired is None]
        return max(live, key=lambda k: k.created) if live else None

    def rotate(self) -> str:
        """Make a new signing key; destroy the old one's private half.

        The old public half verifies its tokens until they expire.
        """
        now = self.clock()
        private = Ed25519PrivateKey.generate()
        kid = key_id(private.public_key())
        fd = os.open(self._private_path(kid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        new = Key(kid, private, private.public_key(), now, None)
        self._export(new)
        for key in self._keys.values():
            if key.retired is None:
                key.retired = now
                self._export(key)  # its public half must be on disk before the private goes
        self._keys[kid] = new
        self._prune(now)
        self._save_index()
        self._destroy_retired_private()
        _LOGGER.info("new token signing key %s", kid)
        return kid

    def verifying_key(self, kid: str, now: float) -> Ed25519PublicKey | None:
        """The public key ``kid`` if it may still verify tokens at ``now``.

        This daemon's own keys first, then the trusted verifier keys.
        """
        key = self._keys.get(kid)
        if key is None:
            return self.trusted().get(kid)
        if now > key.trusted_until(self.lifetime):
            return None
        return key.public

    def note_signed(self, kid: str, exp: float) -> None:
        """Record that ``kid`` signed a token valid until ``exp`` (keeps its public half)."""
        key = self._keys[kid]
        if key.signed_until is None or exp > key.signed_until:
            key.signed_until = exp
            self._save_index()

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The trusted verifier keys (kid -> public key), re-read when the directory changes."""
        directory = self.trusted_dir
        if directory is None:
            return {}
        try:
            names = tuple(sorted(p.name for p in directory.glob("*.pub")))
            stamp = (directory.stat().st_mtime_ns, names)
        except OSError:
            stamp = (-1, ())
        if stamp != self._trusted_stamp:
            self._trusted, self.trusted_errors, self._trusted_files = load_trusted(directory)
            self._trusted_stamp = stamp
        return self._trusted

    def revoked(self) -> frozenset[str]:
        """The revoked key ids (:data:`ALL_TRUSTED` among them: the list is unreadable).

        Re-read when the file changes (inode, size or modification time).
        """
        path = self.revoked_file
        if path is None:
            return frozenset()
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        except OSError:
            stamp = (-1, -1, -1)
        if stamp != self._revoked_stamp:
            self._revoked, self.revoked_errors = load_revoked(path)
            self._revoked_stamp = stamp
        return self._revoked

    def is_revoked(self, kid: str) -> bool:
        """Whether ``kid`` is on the revocation list (or the list is unreadable and
        ``kid`` is not this daemon's own key)."""
        revoked = self.revoked()
        return kid in revoked or (ALL_TRUSTED in revoked and kid not in self._keys)

    def trusted_keys(self) -> dict[str, Any]:
        """The trusted keys, revocations and problems, for operators (``GetTrustedKeys``)."""
        keys = self.trusted()
        revoked = self.revoked()
        return {
            "trusted_dir": None if self.trusted_dir is None else str(self.trusted_dir),
            "revoked_file": None if self.revoked_file is None else str(self.revoked_file),
            "keys": [{"kid": kid, "fingerprint": fingerprint(public),
                      "file": self._trusted_files.get(kid, ""),
                      "revoked": kid in revoked or ALL_TRUSTED in revoked}
                     for kid, public in sorted(keys.items())],
            "revoked": sorted(revoked),
            "errors": {**self.trusted_errors, **self.revoked_errors},
        }

    def held(self) -> list[str]:
        """The ids of every key held in memory (current and retired), oldest first."""
        return [k.kid for k in sorted(self._keys.values(), key=lambda k: k.created)]

    def public_keys(self) -> list[dict[str, Any]]:
        """Every key's id, public key (raw base64, and PEM), fingerprint and dates.

        ``current`` marks the signing key; its ``public_key_pem`` is what other
        hosts put in their ``trusted_dir`` (``schedcpctl keys export``).
        """
        current = self.current()
        return [
            {"kid": k.kid, "created": k.created, "retired": k.retired,
             "current": current is not None and k.kid == current.kid,
             "fingerprint": fingerprint(k.public), "public_key_pem": public_pem(k.public),
             "public_key": base64.b64encode(k.public.public_bytes(
                 serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()}
            for k in sorted(self._keys.values(), key=lambda k: k.created)
        ]


def load_revoked(path: Path) -> tuple[frozenset[str], dict[str, str]]:
    """The key ids a revocation list names: (ids, ``file:line`` -> error).

    A missing file revokes nothing; an unreadable one revokes every trusted
    key (:data:`ALL_TRUSTED`): a list nobody can read must not let through
    the key it was written to stop.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return frozenset(), {}
    except (OSError, UnicodeDecodeError) as err:
        _LOGGER.error("revocation list %s is unreadable (%s): every trusted verifier key "
                      "is refused until it can be read", path, err)
        return frozenset({ALL_TRUSTED}), {str(path): f"unreadable, every trusted key is "
                                                     f"refused: {err}"}
    revoked: set[str] = set()
    problems: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if not _REVOKED_LINE.match(entry):
            problems[f"{path.name}:{number}"] = (f"{entry[:40]!r} is neither a key id (16 hex "
                                                 "digits) nor a fingerprint (64)")
            _LOGGER.error("revocation list %s line %d revokes nothing: %s", path, number,
                          problems[f"{path.name}:{number}"])
            continue
        revoked.add(entry[:16])
    if revoked:
        _LOGGER.info("revoked verifier keys (%s): %s", path, ", ".join(sorted(revoked)))
    return frozenset(revoked), problems


def load_trusted(directory: Path) -> tuple[dict[str, Ed25519PublicKey], dict[str, str],
                                           dict[str, str]]:
    """Ed25519 public keys (PEM) in ``directory/*.pub``.

    Returns (kid -> key, file -> error, kid -> file name).
    """
    keys: dict[str, Ed25519PublicKey] = {}
    problems: dict[str, str] = {}
    files_of: dict[str, str] = {}
    try:
        files = sorted(directory.glob("*.pub"))
    except OSError as err:
        return {}, {str(directory): str(err)}, {}
    for path in files:
        try:
            loaded = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(loaded, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            kid = key_id(loaded)
            if _KID_NAME.match(path.stem) and path.stem != kid:
                raise ValueError(f"the file is named for key {path.stem} but holds key {kid}")
        except (OSError, ValueError) as err:
            problems[path.name] = str(err)
            _LOGGER.error("trusted verifier key %s is not used: %s", path, err)
            continue
        keys[kid] = loaded
        files_of[kid] = path.name
    if keys:
        _LOGGER.info("trusted verifier keys from %s: %s", directory, ", ".join(sorted(keys)))
    return keys, problems, files_of
