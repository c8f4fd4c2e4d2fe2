"""The daemon's SQLite state database: connection, migrations, one writer.

The database lives at ``<state-dir>/schedcpd.db`` (WAL, ``synchronous=FULL``
so a committed record survives a crash).  Schema changes are numbered
migrations (listed in :mod:`schedcpd.schema`) applied in order at open; the
applied version is kept in ``PRAGMA user_version``.  All statements run on
one dedicated thread so the event loop never blocks on disk and SQLite sees
a single writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")
Migration = Callable[[Database], None]


def open_database(path: Path, migrations: list[Migration]) -> Database:
    """Open (creating if needed) the database at ``path`` and migrate it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    db = Database(conn, execute_plugins=False)
    migrate(db, migrations)
    path.chmod(0o600)
    return db


def migrate(db: Database, migrations: list[Migration]) -> int:
    """Apply the migrations not yet applied; return the resulting version."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise RuntimeError(
            f"database schema version {version} is newer than this schedcpd "
            f"knows ({len(migrations)}); refusing to touch it"
        )
    for number, step in enumerate(migrations[version:], start=version + 1):
        with db.conn:
            db.conn.execute("BEGIN")
            step(db)
            db.conn.execute(f"PRAGMA user_version={number}")
        _LOGGER.info("database migrated to schema version %d (%s)", number, step.__name__)
    return len(migrations)


class StateStore:
    """The database plus the single thread every statement runs on."""

    def __init__(self, path: Path, migrations: list[Migration]) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        # Open on the writer thread so the connection is only ever used there.
        self.db: Database = self._executor.submit(open_database, path, migrations).result()

    async def run(self, fn: Callable[[Database], T]) -> T:
        """Run ``fn(db)`` on the writer thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self.db)

    def run_sync(self, fn: Callable[[Database], T]) -> T:
        """Run ``fn(db)`` on the writer thread from synchronous code."""
        return self._executor.submit(fn, self.db).result()

    def close(self) -> None:
        """Checkpoint the WAL and close the connection."""

        def _close(db: Database) -> Any:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.conn.close()

        try:
            self._executor.submit(_close, self.db).result()
        finally:
            self._executor.shutdown(wait=True)
