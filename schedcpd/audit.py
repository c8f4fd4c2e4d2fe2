"""The audit trail: one row for every mutating call, whoever made it.

A row holds the time, the caller's uid and pid as the bus reported them, the
method, a SHA-256 digest of its arguments (arguments themselves may be large
or sensitive), and the outcome (``ok`` or the error name).  Denied calls are
recorded too: an operator wants to see who tried.

Calls refused before dispatch (a wrong signature, arguments too large,
``Busy``, a member or interface the object does not have) get rows too,
marked ``before_dispatch``, with the reason in ``detail``.  Anyone on the bus
can send those at any rate, so they are bounded twice: a
:class:`RefusalLimiter` lets only so many per minute have a row of their own
(the rest are counted and summed up in one ``suppressed`` row per minute),
and only the newest ``kept`` refusal rows are kept.  The rows of dispatched
calls are never pruned.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def migrate_audit_refused(db: Database) -> None:
    """Schema: mark the rows of calls refused before dispatch (they are pruned)."""
    db.table("audit").add_column("before_dispatch", int, not_null_default=0)
    db.table("audit").create_index(["before_dispatch", "id"])


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

    async def record_refused(self, rec: AuditRecord, keep: int) -> None:
        """Append the row of a call refused before dispatch; keep the newest ``keep`` such."""
        row = {"time": time.time(), **rec.__dict__, "before_dispatch": 1}

        def _insert(db: Database) -> None:
            with db.conn:
                db.table("audit").insert(row)
                db.execute(
                    "DELETE FROM audit WHERE before_dispatch = 1 AND id <= (SELECT id FROM audit"
                    " WHERE before_dispatch = 1 ORDER BY id DESC LIMIT 1 OFFSET ?)", [keep])

        await self._store.run(_insert)

    async def recent(self, limit: int = 50, method: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` rows, newest first, optionally for one method."""

        def _query(db: Database) -> list[dict[str, Any]]:
            where, params = ("method = ?", [method]) if method else (None, [])
            return list(
                db.table("audit").rows_where(where, params, order_by="id desc", limit=limit)
            )

        return await self._store.run(_query)


SUPPRESSED = "suppressed"
"""``result`` of the row that sums up the refusals without a row of their own."""

_SENDERS_COUNTED = 256  # distinct bus names counted per window in a suppressed row


@dataclass
class SuppressedRefusals:
    """Refusals in one window that had no row of their own."""

    started: float  # wall-clock time the window began
    seconds: float
    count: int = 0
    by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    by_sender: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, sender: str, reason: str) -> None:
        """Count one more refusal."""
        self.count += 1
        self.by_reason[reason] += 1
        if sender in self.by_sender or len(self.by_sender) < _SENDERS_COUNTED:
            self.by_sender[sender] += 1

    def record(self) -> AuditRecord:
        """The one row that stands for them all."""
        reasons = ", ".join(f"{n} {r.rsplit('.', 1)[-1]}" for r, n in self.by_reason.most_common())
        senders = ", ".join(f"{s} {n}" for s, n in self.by_sender.most_common(5))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return AuditRecord(
            uid=-1, pid=-1, sender="", method="*", args_digest="", result=SUPPRESSED,
            detail=(f"{self.count} calls refused before dispatch in the {self.seconds:g} s from "
                    f"{started} had no row of their own: {reasons}; most from {senders}"))


class RefusalLimiter:
    """Which refused calls get an audit row of their own, per fixed window.

    At most ``per_window`` refusals per window, and at most a sixth of them
    (at least one) from one bus connection, so one flooding client cannot
    hide another's refusals.  The rest are counted; :meth:`due` hands out the
    count of each window that has ended.  ``clock`` is monotonic seconds
    (a parameter so that tests need not wait a minute).
    """

    def __init__(self, per_window: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock, self._wall = clock, wall
        self.window = window
        self._closed: list[SuppressedRefusals] = []
        self.configure(per_window)
        self._open(self._clock())

    def configure(self, per_window: int) -> None:
        """Change the number of rows per window (from the next window on)."""
        self.per_window = per_window
        self.per_sender = max(1, per_window // 6)

    def _open(self, now: float) -> None:
        self._end = now + self.window
        self._admitted = 0
        self._by_sender: dict[str, int] = {}  # at most per_window keys: only admitted ones
        self._suppressed = SuppressedRefusals(self._wall(), self.window)

    def _roll(self) -> None:
        now = self._clock()
        if now >= self._end:
            if self._suppressed.count:
                self._closed.append(self._suppressed)
            self._open(now)

    def admit(self, sender: str, reason: str) -> bool:
        """Whether this refusal gets a row of its own (else it is counted)."""
        self._roll()
        mine = self._by_sender.get(sender, 0)
        if self._admitted < self.per_window and mine < self.per_sender:
            self._admitted += 1
            self._by_sender[sender] = mine + 1
            return True
        self._suppressed.add(sender, reason)
        return False

    @property
    def suppressing(self) -> bool:
        """Whether the current window has counted refusals without a row."""
        return self._suppressed.count > 0

    def due(self) -> list[SuppressedRefusals]:
        """The counts of windows that have ended since the last call, oldest first."""
        self._roll()
        out, self._closed = self._closed, []
        return out

    def seconds_left(self) -> float:
        """Seconds until the current window ends."""
        return max(0.0, self._end - self._clock())
