"""Journaled reads and writes of every scheduler knob, restore and override checks.

Every kernel write of the scheduler plugin goes through :meth:`Actuator.set`:
read the live value, commit it to the journal, write, mark applied.  Keys
name the target so a restart can find it again:

- ``task:<tid>:<start>:<knob>`` - a per-task knob (kind ``task_attr``), or
  the task's cgroup in one hierarchy, knob ``cgroup.<controller>`` (kind
  ``cgroup_membership``; prior ``{"path", "affinity"}``, because joining a
  cpuset rewrites the task's affinity);
- ``cgroup_dir:<controller>:<path>`` - a cgroup we created (prior ``None``);
- ``cgroup_value:<controller>:<path>:<file>`` - a value in our cgroup;
- ``cgroup_controller:<controller>:<parent>:<owner>`` - on cgroup v2, whether
  ``<parent>`` passes the controller on to its children (``"on"``/``"off"``
  in its ``cgroup.subtree_control``); one key per owner, every owner saving
  the state from before the first of them (see :meth:`Actuator.enable_controller`);
- ``unit_property:<unit>:<property>`` - on a systemd host, a runtime
  property of a target's unit (:mod:`plugins.scheduler.unit_groups`);
- ``sysctl:<name>`` / ``debugfs:<name>``.

Fault injection for the crash tests: with ``SCHEDCP_FAULT=after_journal_commit``
or ``after_write`` (optionally ``:<n>`` for the n-th write) in the environment
the process SIGKILLs itself at that point (the journal row is then ``pending``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugins.scheduler import cgroups, sysctl, tasks
from plugins.scheduler.cgroups import Hierarchy
from plugins.scheduler.systemd import SystemdError
from plugins.scheduler.tasks import TaskGone
from plugins.scheduler.unit_groups import KIND_UNIT, Units, parse_unit_key
from schedcpd.plugin_api import (
    APPLIED,
    OVERRIDDEN,
    PENDING,
    Journal,
    JournalEntry,
    fault_point,
)

_LOGGER = logging.getLogger(__name__)

SUBSYSTEM = "scheduler"

KIND_TASK = "task_attr"
KIND_MEMBERSHIP = "cgroup_membership"
KIND_DIR = "cgroup_dir"
KIND_VALUE = "cgroup_value"
KIND_CONTROLLER = "cgroup_controller"
KIND_SYSCTL = "sysctl"
KIND_DEBUGFS = "debugfs"

_UNSET: Any = object()
# States in which a key's history decides how it may be written.
HISTORY_STATES = (PENDING, APPLIED, OVERRIDDEN)
#: the note of entries a forked child inherited (journaled, never written)
INHERITED_NOTE = "inherited at fork"
# (owner, kind, key, new, prior) of a value a forked child inherited.
Inherited = tuple[str, str, str, Any, Any]


class Gone(Exception):
    """The target of a key no longer exists (task exited, cgroup removed)."""


def task_key(tid: int, start: int, knob: str) -> str:
    """Journal key of a per-task knob."""
    return f"task:{tid}:{start}:{knob}"




@dataclass
class Change:
    """Outcome of one :meth:`Actuator.set` call."""

    key: str
    knob: str
    before: Any
    after: Any
    status: str  # changed | unchanged | conflict | overridden | gone | error | dry-run
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (the ``{"target", "knob", "before", "after"}`` shape + status)."""
        target = self.key.rsplit(":", 1)[0] if self.key.startswith("task:") else self.key
        return {
            "target": target,
            "knob": self.knob,
            "before": self.before,
            "after": self.after,
            "status": self.status,
            "note": self.note,
        }


class Actuator:
    """Reads, writes and restores knobs by journal key; thread-safe."""

    def __init__(self, journal: Journal, hierarchies: dict[str, Hierarchy],
                 units: Units | None = None) -> None:
        self.journal = journal
        self.hierarchies = hierarchies
        self.units = units
        self.lock = threading.RLock()

    # -- live values ------------------------------------------------------

    def _hierarchy(self, controller: str) -> Hierarchy:
        if controller not in self.hierarchies:
            raise Gone(f"no {controller} cgroup hierarchy")
        return self.hierarchies[controller]

    @staticmethod
    def _live_task(parts: list[str]) -> tuple[int, str]:
        """(tid, knob) of a ``task:<tid>:<start>:<knob>`` key; Gone if the task exited."""
        tid, start, knob = int(parts[1]), int(parts[2]), parts[3]
        if not tasks.is_alive(tid, start):
            raise Gone(f"task {tid} exited")
        return tid, knob

    def _value_path(self, parts: list[str]) -> Path:
        """The file of a cgroup value key (``...:<controller>:<group>:<file>``); Gone if missing."""
        path = self._hierarchy(parts[1]).path(parts[2]) / parts[3]
        if not path.exists():
            raise Gone(f"{path} does not exist")
        return path

    def _unit(self, key: str, value: Any = _UNSET) -> Any:
        """Read (or write ``value`` to) a unit property through systemd."""
        if self.units is None:
            raise Gone(f"{key}: no systemd backend in this daemon")
        unit, prop = parse_unit_key(key)
        try:
            if value is _UNSET:
                return self.units.get(unit, prop)
            self.units.set(unit, {prop: value})
            return None
        except SystemdError as exc:  # NoSuchUnit is "gone", the rest a failure
            if exc.no_unit:
                raise Gone(f"unit {unit}: {exc}") from exc
            raise OSError(f"systemd: {exc}") from exc

    def read(self, kind: str, key: str) -> Any:
        """Live value for ``key`` (raises :class:`Gone`)."""
        if kind == KIND_UNIT:
            return self._unit(key)
        parts = key.split(":")
        try:
            if parts[0] == "task":
                tid, knob = self._live_task(parts)
                if kind == KIND_MEMBERSHIP:
                    hierarchy = self._hierarchy(knob.split(".", 1)[1])
                    return {"path": cgroups.task_cgroup(tid, hierarchy)}
                return tasks.read_knob(tid, knob)
            if kind == KIND_DIR:
                hierarchy = self._hierarchy(parts[1])
                return "present" if hierarchy.path(parts[2]).is_dir() else None
            if kind == KIND_VALUE:
                path = self._value_path(parts)
                return cgroups.read_file(path)
            if kind == KIND_CONTROLLER:
                hierarchy = self._hierarchy(parts[1])
                try:
                    return "on" if cgroups.controller_enabled(hierarchy, parts[2]) else "off"
                except FileNotFoundError as exc:
                    raise Gone(str(exc)) from exc
            if kind == KIND_SYSCTL:
                return sysctl.read_sysctl(parts[1])
            if kind == KIND_DEBUGFS:
                return sysctl.read_debugfs(parts[1])
        except TaskGone as exc:
            raise Gone(str(exc)) from exc
        raise ValueError(f"unknown journal kind/key {kind} {key}")

    def write(self, kind: str, key: str, value: Any) -> None:
        """Write ``value`` for ``key`` (no journal: callers use :meth:`set`)."""
        if kind == KIND_UNIT:
            self._unit(key, value)
            return
        parts = key.split(":")
        try:
            if parts[0] == "task":
                tid, knob = self._live_task(parts)
                if kind == KIND_MEMBERSHIP:
                    hierarchy = self._hierarchy(knob.split(".", 1)[1])
                    if not hierarchy.path(value["path"]).is_dir():
                        raise Gone(f"cgroup {value['path']} no longer exists")
                    cgroups.move_task(tid, hierarchy, value["path"])
                    if value.get("affinity") is not None:
                        tasks.write_knob(tid, "affinity", value["affinity"])
                    return
                tasks.write_knob(tid, knob, value)
                return
            if kind == KIND_DIR:
                hierarchy = self._hierarchy(parts[1])
                if value is None:
                    note = cgroups.remove_group(hierarchy, parts[2])
                    if note not in ("removed", "already gone"):
                        raise OSError(note)
                else:
                    cgroups.create_group(hierarchy, parts[2])
                return
            if kind == KIND_VALUE:
                path = self._value_path(parts)
                cgroups.write_file(path, str(value))
                return
            if kind == KIND_CONTROLLER:
                hierarchy = self._hierarchy(parts[1])
                if value == "on" and not hierarchy.path(parts[2]).is_dir():
                    cgroups.create_group(hierarchy, parts[2])  # the configured cgroup_parent
                cgroups.set_controller(hierarchy, parts[2], value == "on")
                return
            if kind == KIND_SYSCTL:
                sysctl.write_sysctl(parts[1], str(value))
                return
            if kind == KIND_DEBUGFS:
                sysctl.write_debugfs(parts[1], str(value))
                return
        except TaskGone as exc:
            raise Gone(str(exc)) from exc
        raise ValueError(f"unknown journal kind/key {kind} {key}")

    @staticmethod
    def same(kind: str, live: Any, value: Any) -> bool:
        """Whether a live value equals a journaled one (membership compares the path)."""
        if kind == KIND_MEMBERSHIP:
            return isinstance(value, dict) and live.get("path") == value.get("path")
        return bool(live == value)

    # -- journaled write --------------------------------------------------

    def set(
        self,
        owner: str,
        kind: str,
        key: str,
        new: Any,
        *,
        prior: Any = _UNSET,
        dry_run: bool = False,
    ) -> Change:
        """Journal then write ``new`` for ``key`` on behalf of ``owner``.

        ``prior`` overrides the value saved for restore (a forked child of a
        managed task inherits our value; its true prior is the parent's).
        Never writes a key another owner manages, nor one this owner lost to
        a manual override.
        """
        knob = key.rsplit(":", 1)[-1] if key.startswith("task:") else kind
        with self.lock:
            try:
                live = self.read(kind, key)
            except Gone as exc:
                if dry_run and not key.startswith("task:"):
                    # e.g. a value in a cgroup that the real apply would create first
                    return Change(key, knob, None, new, "dry-run", f"does not exist yet: {exc}")
                return Change(key, knob, None, new, "gone", str(exc))
            except OSError as exc:
                return Change(key, knob, None, new, "error", str(exc))
            if dry_run:
                return Change(key, knob, live, new, "dry-run")
            history = self.journal.for_key(key, subsystem=SUBSYSTEM)
            others = sorted({e.owner for e in history if e.owner != owner})
            if others:
                return Change(key, knob, live, new, "conflict", f"managed by {', '.join(others)}")
            if self.journal.for_key(key, states=(OVERRIDDEN,), subsystem=SUBSYSTEM):
                return Change(key, knob, live, new, "overridden", "changed by someone else earlier")
            if history and not self.same(kind, live, history[0].new):
                self._overridden(history, live)
                return Change(key, knob, live, new, "overridden", "changed by someone else")
            if prior is _UNSET:
                if self.same(kind, live, new):
                    return Change(key, knob, live, new, "unchanged")
                prior = live
            entry_id = self.journal.record(owner, kind, key, prior, new, subsystem=SUBSYSTEM)
            fault_point("after_journal_commit")
            try:
                self.write(kind, key, new)
            except Gone as exc:
                self.journal.mark_skipped(entry_id, f"gone before write: {exc}")
                return Change(key, knob, live, new, "gone", str(exc))
            except (OSError, ValueError) as exc:
                self.journal.mark_skipped(entry_id, f"write failed: {exc}")
                return Change(key, knob, live, new, "error", str(exc))
            fault_point("after_write")
            self.journal.mark_applied(entry_id)
            return Change(key, knob, live, new, "changed")

    def enable_controller(self, owner: str, controller: str, parent: str,
                          dry_run: bool = False) -> Change:
        """On cgroup v2: make ``parent`` pass ``controller`` on to its children, journaled.

        The key is per owner, so two policies sharing a parent never
        conflict; an owner that finds the controller on because another
        owner turned it on saves that owner's prior ("off"), so whichever
        restores last turns it off again (:meth:`_restore` leaves it on
        while another owner's group still needs it).  Found on for any
        other reason (systemd, the administrator), nothing is journaled.
        """
        key = f"{KIND_CONTROLLER}:{controller}:{parent}:{owner}"
        with self.lock:
            if self.journal.for_key(key, subsystem=SUBSYSTEM):
                return Change(key, KIND_CONTROLLER, "on", "on", "unchanged", "journaled before")
            if not dry_run:
                try:
                    live = self.read(KIND_CONTROLLER, key)
                except (Gone, OSError):
                    live = "off"  # the parent does not exist yet (a configured cgroup_parent)
                if live == "on":
                    prefix = f"{KIND_CONTROLLER}:{controller}:{parent}:"
                    shared = [e for e in self.journal.for_key_prefix(prefix, subsystem=SUBSYSTEM)
                              if e.prior == "off"]
                    if not shared:
                        return Change(key, KIND_CONTROLLER, "on", "on", "unchanged")
                    return self.set(owner, KIND_CONTROLLER, key, "on", prior="off")
        return self.set(owner, KIND_CONTROLLER, key, "on", dry_run=dry_run)

    def inherit(self, items: list[Inherited]) -> list[Change]:
        """Journal values forked children inherited from tasks we manage; one commit.

        ``items`` are ``(owner, kind, key, new, prior)``, ``prior`` being the
        parent's journaled prior.  The kernel copied our values into the
        child at fork, so nothing is written: an item whose live value is
        still ``new`` is saved as applied.  One that differs was changed
        after the fork (by the task itself, e.g. ``nice``/``chrt`` in a
        build, or by someone else): it is not ours any more and is left
        alone (``overridden``).  A key that already has a history was
        handled before and is left as it is (``unchanged``).
        """
        changes: list[Change] = []
        rows: dict[str, list[tuple[str, str, Any, Any]]] = {}
        with self.lock:
            known: dict[str, bool] = {}
            for owner, kind, key, new, prior in items:
                knob = key.rsplit(":", 1)[-1]
                task = key.rsplit(":", 1)[0] + ":"
                if task not in known:
                    known[task] = bool(self.journal.for_key_prefix(
                        task, states=HISTORY_STATES, subsystem=SUBSYSTEM))
                if known[task]:
                    changes.append(Change(key, knob, None, new, "unchanged", "journaled before"))
                    continue
                try:
                    live = self.read(kind, key)
                except Gone as exc:
                    changes.append(Change(key, knob, None, new, "gone", str(exc)))
                    continue
                except OSError as exc:
                    changes.append(Change(key, knob, None, new, "error", str(exc)))
                    continue
                if not self.same(kind, live, new):
                    changes.append(Change(key, knob, live, new, "overridden",
                                          "changed since the fork; left alone"))
                    continue
                rows.setdefault(owner, []).append((kind, key, prior, new))
                changes.append(Change(key, knob, live, new, "changed", INHERITED_NOTE))
            for owner, owned in rows.items():
                self.journal.record_inherited(owner, owned, subsystem=SUBSYSTEM,
                                              note=INHERITED_NOTE)
            if rows:
                fault_point("after_journal_commit")
        return changes

    def _overridden(self, history: list[JournalEntry], live: Any) -> None:
        newest = history[0]
        note = f"live value {live!r} is not ours ({newest.new!r}); left alone"
        _LOGGER.warning("manual override of %s (owner %s): %s", newest.key, newest.owner, note)
        for entry in history:
            self.journal.mark_overridden(entry.id, note)

    # -- restore ----------------------------------------------------------

    def restore_entry(self, entry: JournalEntry) -> dict[str, Any]:
        """Put ``entry.prior`` back if the live value is still ours; record the outcome."""
        with self.lock:
            outcome, note = self._restore(entry)
            if outcome == "restored":
                self.journal.mark_restored(entry.id, note)
            elif outcome == "skipped":
                self.journal.mark_skipped(entry.id, note)
            else:
                _LOGGER.warning("not restoring %s: %s", entry.key, note)
                self.journal.mark_overridden(entry.id, note)
            return {
                "id": entry.id,
                "owner": entry.owner,
                "key": entry.key,
                "kind": entry.kind,
                "prior": entry.prior,
                "new": entry.new,
                "time": entry.time,
                "inherited": entry.note == INHERITED_NOTE,
                "outcome": outcome,
                "note": note,
            }

    def _restore(self, entry: JournalEntry) -> tuple[str, str]:
        try:
            live = self.read(entry.kind, entry.key)
        except Gone as exc:
            return "skipped", str(exc)
        except OSError as exc:
            return "skipped", f"cannot read: {exc}"
        if self.same(entry.kind, live, entry.prior):
            return "restored", "already at prior value"
        if not self.same(entry.kind, live, entry.new):
            return "overridden", f"live value {live!r} is neither ours nor the prior"
        if entry.kind == KIND_CONTROLLER:
            parts = entry.key.split(":")
            users = cgroups.controller_users(self.hierarchies[parts[1]], parts[2], entry.owner)
            if users:
                # Another owner's group still uses it; that owner saved "off" too.
                return "restored", f"left on: still used by {', '.join(users[:5])}"
        try:
            self.write(entry.kind, entry.key, entry.prior)
            back = self.read(entry.kind, entry.key)
        except Gone as exc:
            return "skipped", str(exc)
        except (OSError, ValueError) as exc:
            return "skipped", f"restore failed: {exc}"
        if not self.same(entry.kind, back, entry.prior):
            return "skipped", f"read back {back!r} after writing {entry.prior!r}"
        return "restored", ""

    def restore(
        self,
        owner: str | None = None,
        between: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """Restore every open entry (of ``owner``, or all), newest first.

        Task entries go first, then ``between`` is called with their results
        (its records are reported as ``descendants``), then the rest: the
        cgroup directories are removed once every task has left them.
        """
        with self.lock:
            pending = self.journal.pending_restore(owner=owner, subsystem=SUBSYSTEM)
            results = [self.restore_entry(e) for e in pending if e.key.startswith("task:")]
            extra = between(results) if between is not None else []
            results += [self.restore_entry(e) for e in pending if not e.key.startswith("task:")]
        summary: dict[str, int] = {}
        for result in results:
            summary[result["outcome"]] = summary.get(result["outcome"], 0) + 1
        return {"entries": results, "summary": summary, "descendants": extra}

    def check_overrides(self) -> list[dict[str, Any]]:
        """Find applied values someone else changed; mark them overridden.

        Entries of exited tasks are marked skipped on the way.
        """
        found = []
        with self.lock:
            newest: dict[str, list[JournalEntry]] = {}
            for entry in self.journal.pending_restore(subsystem=SUBSYSTEM):
                newest.setdefault(entry.key, []).append(entry)
            for key, history in newest.items():
                if history[0].state != "applied" or history[0].kind == KIND_DIR:
                    continue
                try:
                    live = self.read(history[0].kind, key)
                except (Gone, OSError) as exc:
                    for entry in history:
                        self.journal.mark_skipped(entry.id, f"target gone: {exc}")
                    continue
                if not self.same(history[0].kind, live, history[0].new):
                    self._overridden(history, live)
                    found.append(
                        {
                            "key": key,
                            "owner": history[0].owner,
                            "ours": history[0].new,
                            "live": live,
                        }
                    )
        return found

    def forget_tasks(self, tids: list[int]) -> int:
        """Mark open entries of exited tasks skipped, in one commit; return how many."""
        with self.lock:
            gone: list[int] = []
            for tid in tids:
                entries = self.journal.for_key_prefix(f"task:{tid}:", subsystem=SUBSYSTEM)
                if entries:
                    live_start = tasks.start_time(tid)
                    gone.extend(e.id for e in entries if int(e.key.split(":")[2]) != live_start)
            if gone:
                self.journal.mark_skipped(gone, "task exited")
        return len(gone)
