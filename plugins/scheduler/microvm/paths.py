"""Where the micro-VM builder keeps its cache and finds its sources."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/schedcp/microvm")
CACHE_ENV = "SCHEDCP_MICROVM_CACHE"
SOURCE_ENV = "SCHEDCP_SCX_SOURCE"
INSTALLED_SOURCE = Path("/usr/lib/schedcp/scx")


def cache_path() -> Path:
    """Where the cache root is (``$SCHEDCP_MICROVM_CACHE`` or the default); not created."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def cache_dir() -> Path:
    """The cache root: ``$SCHEDCP_MICROVM_CACHE`` or /var/cache/schedcp/microvm (created)."""
    path = cache_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


def scx_source_dir() -> Path:
    """The sched_ext sources (bpf/scx of a checkout, or the installed copy)."""
    env = os.environ.get(SOURCE_ENV)
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[3] / "bpf" / "scx", INSTALLED_SOURCE]
    for path in candidates:
        if (path / "scx_common.h").is_file():
            return path
    raise FileNotFoundError(
        "sched_ext sources not found (looked in "
        + ", ".join(str(p) for p in candidates) + f"); set {SOURCE_ENV}")


@contextmanager
def locked(name: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``<cache>/<name>.lock`` (one builder at a time)."""
    root = cache_dir()
    with open(root / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
