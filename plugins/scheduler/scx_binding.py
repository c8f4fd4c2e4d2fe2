"""The token's object binding: deploy exactly the BPF object the verifier loaded.

A T2 token's ``artifact`` claim holds the SHA-256 of the scheduler object
the verifier's kernel stage loaded and of the kernel BTF it loaded it
against (``/sys/kernel/btf/vmlinux`` in the verifier's guest).  Before a
deployment loads anything, the object's bytes and the running kernel's BTF
are hashed and compared; a token without the claim, another object (rebuilt
with other flags, tampered) or another kernel is refused with
:class:`~schedcpd.errors.ObjectMismatch`.

The loader is then given a private copy of exactly the bytes that were
hashed (in the daemon's state directory, 0700), so nothing can swap the file
between the check and the load.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from schedcpd.plugin_api import ObjectMismatch

_BTF_DIGESTS: dict[tuple[str, int, int], str] = {}


def btf_digest(path: Path) -> str:
    """SHA-256 of a kernel BTF file (remembered: the running kernel's never changes)."""
    info = path.stat()
    key = (str(path), info.st_mtime_ns, info.st_size)
    if key not in _BTF_DIGESTS:
        _BTF_DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _BTF_DIGESTS[key]


def check(data: bytes, artifact: Any, btf: Path) -> None:
    """Raise :class:`ObjectMismatch` unless ``artifact`` binds ``data`` and this kernel's BTF."""
    if not isinstance(artifact, dict):
        raise ObjectMismatch("the token binds no BPF object (no 'artifact' claim): verify the "
                             "policy again with a verifier that records what it loaded")
    have = hashlib.sha256(data).hexdigest()
    if artifact.get("object_sha256") != have:
        raise ObjectMismatch(f"the scheduler object to be loaded has sha256 {have}, but the "
                             f"token was issued for {artifact.get('object_sha256')} (rebuilt "
                             "or tampered): refused")
    try:
        kernel = btf_digest(btf)
    except OSError as err:
        raise ObjectMismatch(f"cannot read the running kernel's BTF {btf}: {err}") from err
    if artifact.get("btf_sha256") != kernel:
        raise ObjectMismatch(f"the running kernel's BTF ({btf}) has sha256 {kernel}, but the "
                             f"object was verified against {artifact.get('btf_sha256')} "
                             f"(another kernel, {os.uname().release} here): refused")


def bound_copy(source: Path, artifact: Any, btf: Path, dest: Path) -> Path:
    """Check ``source`` against ``artifact`` and write the checked bytes to ``dest`` (0600)."""
    data = source.read_bytes()
    check(data, artifact, btf)
    tmp = dest.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, dest)
    return dest
