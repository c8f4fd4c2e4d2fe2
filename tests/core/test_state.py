"""The state database: WAL, numbered migrations, no sqlite-utils plugins, the audit table."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from sqlite_utils import Database
from sqlite_utils.plugins import pm as sqlite_utils_plugins

from schedcpd.audit import AuditLog, AuditRecord, digest_arguments
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore, open_database


def test_database_is_wal_private_and_fully_migrated(tmp_path: Path) -> None:
    path = tmp_path / "schedcpd.db"
    store = StateStore(path, MIGRATIONS)
    try:
        assert store.run_sync(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 2
        assert set(store.run_sync(lambda db: db.table_names())) >= {"audit"}
    finally:
        store.close()
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        other.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_migrations_run_once_in_order_and_newer_schemas_are_refused(tmp_path: Path) -> None:
    ran: list[str] = []

    def first(db: Database) -> None:
        ran.append("first")
        db.table("a").create({"id": int}, pk="id")

    def second(db: Database) -> None:
        ran.append("second")
        db.table("a").add_column("name", str)

    path = tmp_path / "db.sqlite"
    open_database(path, [first]).conn.close()
    db = open_database(path, [first, second])  # only the new one runs
    assert ran == ["first", "second"]
    assert set(db.table("a").columns_dict) == {"id", "name"}
    db.conn.close()
    with pytest.raises(RuntimeError, match="newer than this schedcpd"):
        open_database(path, [first])


def test_a_failing_migration_leaves_the_version_unchanged(tmp_path: Path) -> None:
    def broken(db: Database) -> None:
        db.table("b").create({"id": int}, pk="id")
        raise ValueError("half done")

    path = tmp_path / "db.sqlite"
    with pytest.raises(ValueError):
        open_database(path, [broken])
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert "b" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


class _RecordingPlugin:
    """A real sqlite-utils plugin that records every connection it is given."""

    def __init__(self) -> None:
        self.connections: list[Any] = []

    @sqlite_utils.hookimpl
    def prepare_connection(self, conn: Any) -> None:
        self.connections.append(conn)


def test_no_sqlite_utils_plugin_runs_in_the_daemon(tmp_path: Path) -> None:
    plugin = _RecordingPlugin()
    sqlite_utils_plugins.register(plugin, name="schedcp-test-recorder")
    try:
        # The library runs plugins by default (so this test can fail) ...
        Database(sqlite3.connect(":memory:")).conn.close()
        assert len(plugin.connections) == 1
        # ... but not on the daemon's database.
        open_database(tmp_path / "db.sqlite", MIGRATIONS).conn.close()
        assert len(plugin.connections) == 1
    finally:
        sqlite_utils_plugins.unregister(name="schedcp-test-recorder")


async def test_audit_rows_hold_time_caller_method_digest_and_result(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "schedcpd.db", MIGRATIONS)
    try:
        log = AuditLog(store)
        before = time.time()
        await log.record(AuditRecord(uid=1000, pid=42, sender=":1.7", method="SubmitPolicy",
                                     args_digest=digest_arguments(["doc"]), result="ok"))
        await log.record(AuditRecord(uid=65534, pid=43, sender=":1.8", method="Reload",
                                     args_digest=digest_arguments([]),
                                     result="org.schedcp.Control1.Error.AccessDenied"))
        rows = await log.recent(10)
        assert [r["method"] for r in rows] == ["Reload", "SubmitPolicy"]  # newest first
        row = rows[1]
        assert before <= row["time"] <= time.time()
        assert (row["uid"], row["pid"], row["sender"], row["result"]) == (1000, 42, ":1.7", "ok")
        assert row["args_digest"] == digest_arguments(["doc"]) != digest_arguments(["other"])
        assert len(row["args_digest"]) == 64
        assert [r["uid"] for r in await log.recent(10, "Reload")] == [65534]
    finally:
        store.close()
