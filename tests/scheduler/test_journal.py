from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from schedcpd.journal import Journal


def test_record_is_durable_and_pending_before_write(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    entry = j.record("dep-1", "task_attr", "task:1:2:nice", 0, 5, subsystem="scheduler")
    # A second connection (another process after a crash) sees the committed row.
    other = sqlite3.connect(tmp_path / "j.db")
    row = other.execute("SELECT state, prior, new FROM entries WHERE id = ?", (entry,)).fetchone()
    assert row == ("pending", "0", "5")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    j.close()


def test_states_and_newest_first(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    a = j.record("dep-1", "sysctl", "sysctl:x", "1", "2", subsystem="scheduler")
    j.mark_applied(a)
    b = j.record("dep-1", "sysctl", "sysctl:x", "2", "3", subsystem="scheduler")
    c = j.record("dep-2", "sysctl", "sysctl:y", "1", "2", subsystem="io")
    assert [e.id for e in j.pending_restore()] == [c, b, a]
    assert [e.id for e in j.pending_restore(owner="dep-1")] == [b, a]
    assert [e.id for e in j.pending_restore(subsystem="io")] == [c]
    assert j.owners(subsystem="scheduler") == ["dep-1"]
    j.mark_restored(b, "ok")
    j.mark_overridden(a, "admin")
    j.mark_skipped(c, "gone")
    assert j.pending_restore() == []
    assert j.get(a).state == "overridden" and j.get(a).note == "admin"
    assert [e.id for e in j.for_key("sysctl:x", states=("restored", "overridden"))] == [b, a]
    with pytest.raises(KeyError):
        j.mark_applied(9999)
    j.close()


def test_reopen_keeps_entries_and_schema(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.record("o", "k", "task:12:34:nice", {"a": [1, 2]}, None)
    j.close()
    j2 = Journal(tmp_path / "j.db")
    (entry,) = j2.pending_restore()
    assert entry.prior == {"a": [1, 2]} and entry.new is None
    assert [e.key for e in j2.for_key_prefix("task:12:")] == ["task:12:34:nice"]
    assert j2.for_key_prefix("task:1:") == []
    j2.close()


def test_inherited_rows_are_applied_in_one_commit(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    ids = j.record_inherited(
        "dep-1",
        [("task_attr", "task:7:9:nice", 0, 4), ("task_attr", "task:7:9:policy", "other", "batch")],
        subsystem="scheduler",
        note="inherited at fork",
    )
    other = sqlite3.connect(tmp_path / "j.db")
    rows = other.execute("SELECT state, note FROM entries ORDER BY id").fetchall()
    assert rows == [("applied", "inherited at fork")] * 2
    other.close()
    # Newest first: restore puts the policy back before the nice.
    assert [e.key for e in j.for_key_prefix("task:7:9:")] == ["task:7:9:policy", "task:7:9:nice"]
    j.mark_skipped(ids, "task exited")
    assert [e.state for e in j.entries()] == ["skipped", "skipped"]
    assert j.for_key_prefix("task:7:", states=("skipped",))[0].note == "task exited"
    with pytest.raises(KeyError):
        j.mark_skipped([ids[0], 9999], "gone")
    # All or nothing: the failed batch left the first entry's note alone.
    assert j.get(ids[0]).note == "task exited"
    j.close()


def test_key_prefix_range_is_exact(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    for key in ("task:1:5:nice", "task:1:5:policy", "task:10:5:nice", "task:1;x", "task:0:1:nice"):
        j.record("o", "task_attr", key, 0, 1)
    assert sorted(e.key for e in j.for_key_prefix("task:1:")) == [
        "task:1:5:nice",
        "task:1:5:policy",
    ]
    assert [e.key for e in j.for_key_prefix("task:10:")] == ["task:10:5:nice"]
    with pytest.raises(ValueError):
        j.for_key_prefix("")
    j.close()
