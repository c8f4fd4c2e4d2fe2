"""The save-before-write journal: every kernel value is saved before it is written.

One SQLite database (WAL, ``synchronous=FULL``) holds one row per write a
plugin makes.  The protocol a writer follows:

1. ``entry_id = journal.record(owner, kind, key, prior, new)`` - the prior
   value is committed (and on disk) before this returns;
2. write the kernel value;
3. ``journal.mark_applied(entry_id)``.

A crash between 1 and 2 leaves a ``pending`` row whose write may or may not
have happened; a crash after 2 leaves a ``pending`` row whose write did
happen.  Restore treats both the same way: it reads the live value and
puts ``prior`` back only when the live value is still what we wrote (or
already is ``prior``).  Restore walks rows newest first, so a value written
twice returns to the value it had before the first write.

Values the kernel set by itself (a forked child inherits its parent's) are
saved with ``record_inherited``: already ``applied``, since no write follows.

States: ``pending`` (saved, write may have happened), ``applied``,
``restored``, ``skipped`` (target gone, e.g. the task exited),
``overridden`` (someone else changed the value; we stopped managing it).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from schedcpd.safety_events import NO_EVENTS, SafetyEvents

_LOGGER = logging.getLogger(__name__)

PENDING = "pending"
APPLIED = "applied"
RESTORED = "restored"
SKIPPED = "skipped"
OVERRIDDEN = "overridden"
STATES = (PENDING, APPLIED, RESTORED, SKIPPED, OVERRIDDEN)
# Rows in these states may still hold a value of ours in the kernel.
OPEN_STATES = (PENDING, APPLIED)

_TABLE = "entries"
_KEEP: Any = object()

# Numbered migrations; user_version records how many have run.
_MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE {_TABLE} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        subsystem TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        prior TEXT,
        new TEXT,
        state TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        updated REAL NOT NULL
    );
    CREATE INDEX idx_entries_state ON {_TABLE}(state, subsystem, owner);
    CREATE INDEX idx_entries_key ON {_TABLE}(key);
    """,
    # The target a core-actuated knob was written on (schedcpd.actuator): a
    # file's real path, or "<tid>:<start>" for a syscall knob.
    f"ALTER TABLE {_TABLE} ADD COLUMN target TEXT NOT NULL DEFAULT ''",
)


@dataclass(frozen=True)
class JournalEntry:
    """One saved write; ``prior`` and ``new`` are the decoded JSON values."""

    id: int
    time: float
    subsystem: str
    owner: str
    kind: str
    key: str
    prior: Any
    new: Any
    state: str
    note: str
    target: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as JSON-able data."""
        return {
            "id": self.id,
            "time": self.time,
            "subsystem": self.subsystem,
            "owner": self.owner,
            "kind": self.kind,
            "key": self.key,
            "prior": self.prior,
            "new": self.new,
            "state": self.state,
            "note": self.note,
            "target": self.target,
        }


class Journal:
    """Durable record of every value a plugin writes, and of its prior value.

    Thread-safe: one connection guarded by a lock (the watcher thread of a
    plugin and the daemon's executor may both write).  Every method commits
    before it returns.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn = conn
        self.db = Database(conn, execute_plugins=False)
        self.events: SafetyEvents = NO_EVENTS
        """Told of every override (the daemon's metrics)."""
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is fsync'd, so "recorded" means "on disk" before the
        # caller touches the kernel.
        conn.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                _LOGGER.info("journal %s: migration %s", self.path, number)
                self._conn.executescript(
                    f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;"
                )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def record(
        self,
        owner: str,
        kind: str,
        key: str,
        prior: Any,
        new: Any,
        *,
        subsystem: str = "",
        note: str = "",
        target: str = "",
    ) -> int:
        """Save ``prior`` (and the intended ``new``) durably; return the entry id.

        The row is committed with ``synchronous=FULL`` before this returns, so
        the caller may write the kernel value afterwards.  ``target`` names
        what a core-actuated knob was written on (:mod:`schedcpd.actuator`).
        """
        with self._tx() as conn:
            return self._insert(conn, owner, [(kind, key, prior, new)], PENDING, subsystem,
                                note, target)[0]

    def record_inherited(
        self,
        owner: str,
        rows: list[tuple[str, str, Any, Any]] | list[tuple[str, str, Any, Any, str]],
        *,
        subsystem: str = "",
        note: str = "",
    ) -> list[int]:
        """Save values the kernel already set, as ``applied``, in one transaction.

        ``rows`` are ``(kind, key, prior, new)``, or ``(kind, key, prior, new,
        target)`` for a core-actuated knob.  For a child forked from a
        task we manage: the kernel copied our values into it at fork, so
        there is no write to come and no window before it to protect; one
        commit stands for what ``record`` + ``mark_applied`` do per row.
        """
        with self._tx() as conn:
            return self._insert(conn, owner, rows, APPLIED, subsystem, note)

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        owner: str,
        rows: list[tuple[str, str, Any, Any]] | list[tuple[str, str, Any, Any, str]],
        state: str,
        subsystem: str,
        note: str,
        target: str = "",
    ) -> list[int]:
        now = time.time()
        ids = []
        for row in rows:
            kind, key, prior, new = row[:4]
            where = str(row[4]) if len(row) > 4 else target
            cur = conn.execute(
                f"INSERT INTO {_TABLE} (time, subsystem, owner, kind, key, prior, new,"
                " state, note, updated, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, subsystem, owner, kind, key, json.dumps(prior), json.dumps(new), state,
                 note, now, where),
            )
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
        return ids

    def _set_state(
        self, entry_ids: list[int], state: str, note: str | None, new: Any = _KEEP
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown journal state {state!r}")
        sets = ["state = ?", "updated = ?"]
        values: list[Any] = [state, time.time()]
        if note is not None:
            sets.append("note = ?")
            values.append(note)
        if new is not _KEEP:
            sets.append("new = ?")
            values.append(json.dumps(new))
        with self._tx() as conn:
            for entry_id in entry_ids:
                cur = conn.execute(
                    f"UPDATE {_TABLE} SET {', '.join(sets)} WHERE id = ?", (*values, entry_id)
                )
                if cur.rowcount != 1:
                    raise KeyError(f"no journal entry {entry_id}")

    def retarget(self, entry_id: int, kind: str, target: str, prior: Any = _KEEP,
                 new: Any = _KEEP) -> None:
        """Hand an open entry a plugin wrote itself to the core's actuator (an upgrade).

        The entry gets the knob name as ``kind`` and the knob's ``target``
        (and, where the old form saved more, the knob's form of ``prior`` /
        ``new``); its state and owner stay, so a restore after the upgrade
        puts back what the old code wrote.
        """
        sets, values = ["kind = ?", "target = ?", "updated = ?"], [kind, target, time.time()]
        for column, value in (("prior", prior), ("new", new)):
            if value is not _KEEP:
                sets.append(f"{column} = ?")
                values.append(json.dumps(value))
        with self._tx() as conn:
            cur = conn.execute(f"UPDATE {_TABLE} SET {', '.join(sets)} WHERE id = ?",
                               (*values, entry_id))
            if cur.rowcount != 1:
                raise KeyError(f"no journal entry {entry_id}")

    def mark_applied(self, entry_id: int, new: Any = _KEEP) -> None:
        """Record that the write of ``entry_id`` happened.

        ``new`` replaces the recorded new value when the write learned more
        than was known before it (a started process's pid and start time).
        """
        self._set_state([entry_id], APPLIED, None, new)

    def mark_restored(self, entry_id: int, note: str = "") -> None:
        """Record that the prior value of ``entry_id`` is back (or never left)."""
        self._set_state([entry_id], RESTORED, note)

    def mark_skipped(self, entry_id: int | list[int], note: str) -> None:
        """Record that ``entry_id`` (one, or a list in one commit) cannot be restored.

        The target is gone; ``note`` says why.
        """
        self._set_state(entry_id if isinstance(entry_id, list) else [entry_id], SKIPPED, note)

    def mark_overridden(self, entry_id: int, note: str) -> None:
        """Record that someone else changed the value; we no longer manage it."""
        self._set_state([entry_id], OVERRIDDEN, note)
        self.events.override_detected(self.get(entry_id).subsystem)

    def counts(self) -> dict[tuple[str, str], int]:
        """Entries by (subsystem, state): what the metrics report at each scrape."""
        sql = f"SELECT subsystem, state, COUNT(*) FROM {_TABLE} GROUP BY subsystem, state"
        with self._lock:
            return {(row[0], row[1]): int(row[2]) for row in self._conn.execute(sql)}

    def get(self, entry_id: int) -> JournalEntry:
        """Return one entry by id (``KeyError`` if absent)."""
        rows = self._select("id = ?", [entry_id])
        if not rows:
            raise KeyError(f"no journal entry {entry_id}")
        return rows[0]

    def pending_restore(
        self, owner: str | None = None, subsystem: str | None = None
    ) -> list[JournalEntry]:
        """Entries that may still hold our value in the kernel, newest first."""
        where = ["state IN (?, ?)"]
        args: list[Any] = list(OPEN_STATES)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if subsystem is not None:
            where.append("subsystem = ?")
            args.append(subsystem)
        return self._select(" AND ".join(where), args, newest_first=True)

    def for_key(
        self, key: str, states: tuple[str, ...] = OPEN_STATES, subsystem: str | None = None
    ) -> list[JournalEntry]:
        """Entries for one target key in ``states`` (default: open), newest first."""
        where = f"key = ? AND state IN ({', '.join('?' for _ in states)})"
        args: list[Any] = [key, *states]
        if subsystem is not None:
            where += " AND subsystem = ?"
            args.append(subsystem)
        return self._select(where, args, newest_first=True)

    def for_key_prefix(
        self, prefix: str, states: tuple[str, ...] = OPEN_STATES, subsystem: str | None = None
    ) -> list[JournalEntry]:
        """Entries whose key starts with ``prefix`` in ``states`` (default: open), newest first.

        A range on ``key`` (not ``LIKE``, which cannot use the index): the
        watcher asks this for every fork and exit of a managed tree.
        """
        if not prefix:
            raise ValueError("for_key_prefix needs a non-empty prefix")
        # "+state": keeps SQLite on the key index; the state index would
        # walk every open entry (thousands while a build tree is managed).
        where = f"key >= ? AND key < ? AND +state IN ({', '.join('?' for _ in states)})"
        args: list[Any] = [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), *states]
        if subsystem is not None:
            where += " AND subsystem = ?"
            args.append(subsystem)
        return self._select(where, args, newest_first=True)

    def entries(
        self,
        owner: str | None = None,
        state: str | None = None,
        subsystem: str | None = None,
        limit: int | None = None,
    ) -> list[JournalEntry]:
        """Entries filtered by owner/state/subsystem, newest first."""
        where = ["1 = 1"]
        args: list[Any] = []
        for column, value in (("owner", owner), ("state", state), ("subsystem", subsystem)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        return self._select(" AND ".join(where), args, newest_first=True, limit=limit)

    def owners(self, subsystem: str | None = None) -> list[str]:
        """Owners with at least one open entry."""
        sql = f"SELECT DISTINCT owner FROM {_TABLE} WHERE state IN (?, ?)"
        args: list[Any] = list(OPEN_STATES)
        if subsystem is not None:
            sql += " AND subsystem = ?"
            args.append(subsystem)
        with self._lock:
            return sorted(row[0] for row in self._conn.execute(sql, args))

    def _select(
        self,
        where: str,
        args: list[Any],
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[JournalEntry]:
        sql = (
            "SELECT id, time, subsystem, owner, kind, key, prior, new, state, note, target"
            f" FROM {_TABLE} WHERE {where} ORDER BY id {'DESC' if newest_first else 'ASC'}"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [
            JournalEntry(
                id=row[0],
                time=row[1],
                subsystem=row[2],
                owner=row[3],
                kind=row[4],
                key=row[5],
                prior=json.loads(row[6]) if row[6] is not None else None,
                new=json.loads(row[7]) if row[7] is not None else None,
                state=row[8],
                note=row[9],
                target=row[10],
            )
            for row in rows
        ]
