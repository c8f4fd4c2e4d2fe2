"""The audit trail: one row for every mutating call, whoever made it.

A row holds the time, the caller's uid and pid as the bus reported them, the
method, a SHA-256 digest of its arguments (arguments themselves may be large
or sensitive), and the outcome (``ok`` or the error name).  Denied calls are
recorded too: an operator wants to see who tried.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from schedcpd.state import StateStore


def migrate_audit(db: Database) -> None:
    """Schema: the audit table."""
    db.table("audit").create(
        {"id": int, "time": float, "uid": int, "pid": int, "sender": str, "method": str,
         "args_digest": str, "result": str, "detail": str},
        pk="id",
    )
    db.table("audit").create_index(["time"])


def digest_arguments(args: list[Any] | tuple[Any, ...]) -> str:
    """A stable SHA-256 hex digest of a call's arguments."""
    blob = json.dumps(list(args), sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    """One audited call."""

    uid: int
    pid: int
    sender: str
    method: str
    args_digest: str
    result: str
    detail: str = ""


class AuditLog:
    """Append and query audit rows in the state database."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def record(self, rec: AuditRecord) -> None:
        """Append ``rec``, committed before this returns."""
        row = {"time": time.time(), **rec.__dict__}

        def _insert(db: Database) -> None:
            with db.conn:
                db.table("audit").insert(row)

        await self._store.run(_insert)

    async def recent(self, limit: int = 50, method: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` rows, newest first, optionally for one method."""

        def _query(db: Database) -> list[dict[str, Any]]:
            where, params = ("method = ?", [method]) if method else (None, [])
            return list(
                db.table("audit").rows_where(where, params, order_by="id desc", limit=limit)
            )

        return await self._store.run(_query)
