"""The core actuator: the only writer of kernel state for plugins that declare knobs.

A plugin declares its knobs (:class:`~schedcpd.knobs.Knob`) and hands this
actuator change sets (:class:`~schedcpd.knobs.KnobChange`).  For each
change the actuator, in this order:

1. finds the knob among the plugin's declarations (else
   :class:`~schedcpd.knobs.KnobNotDeclared`);
2. resolves the target: a file's real path (symlinks, ``..``) must be the
   real path of a file one of the knob's patterns matches now (else
   ``KnobNotDeclared``); a syscall target ``"<tid>:<start>"`` must be a live
   thread with that start time (else :class:`TargetGone`);
3. checks the value against the knob's type and range (else
   :class:`~schedcpd.knobs.KnobValueRefused`);
4. reads the live value, commits it to the journal (kind = knob name,
   ``target`` = the resolved target), writes the new value, marks the entry
   applied with the value read back (the kernel may round it).

Every change of a set passes 1-3 before the first is written, so a set with
one bad change writes nothing.  A knob that ``resets`` files beside it
(switching an I/O scheduler resets ``nr_requests``) has each of them
journaled before its own entry (key ``<key>|reset:<file>``); restore puts
them back right after it restores the knob, since the kernel resets them
again then.  ``adopt`` journals values the kernel copied by itself (a
forked child inherits its parent's clamps or I/O priority) as applied.

Restore walks an owner's open entries newest first and puts the prior value
back only where the live value is still what we wrote; a value someone
else changed is left alone (``overridden``); a target that is gone is
``skipped``.  Restores are checked against the declarations too (the
target must still be a declared one).

The actuator knows files and the syscalls of :mod:`schedcpd.syscalls`; it
knows nothing of any subsystem.  Fault injection for crash tests:
``SCHEDCP_FAULT=<subsystem>_after_journal_commit`` / ``<subsystem>_after_write``.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from schedcpd.analysis import procfs
from schedcpd.errors import InvalidArgument
from schedcpd.faults import fault_point
from schedcpd.journal import APPLIED, OVERRIDDEN, PENDING, SKIPPED, Journal, JournalEntry
from schedcpd.knobs import FILE, Knob, KnobChange, KnobNotDeclared, declarations
from schedcpd.restore_rule import (
    KernelRefused,
    TargetGone,
    override_of,
    report_row,
    restore_entry,
)
from schedcpd.syscalls import SYSCALLS

_LOGGER = logging.getLogger(__name__)
RESET_MARK = "|reset:"
"""Joins a change's key and a file its write resets: the key of that file's entry."""


def _start_time(tid: int) -> int | None:
    stat = procfs.read_pid_stat(tid)
    return stat.starttime if stat else None


def _matches(pattern: str, real: str) -> bool:
    """Whether the real path ``real`` is a file ``pattern`` names (see schedcpd.knobs)."""
    prefix, deep, suffix = pattern.partition("/**/")
    if not deep:
        return any(os.path.realpath(m) == real for m in glob.glob(pattern))
    base = os.path.realpath(prefix)
    if not real.startswith(base + "/"):
        return False
    rest, tail = real[len(base) + 1:].split("/"), suffix.split("/")
    return len(rest) >= len(tail) and all(
        fnmatch.fnmatchcase(r, t) for r, t in zip(rest[len(rest) - len(tail):], tail,
                                                  strict=True))


def _parse(knob: Knob, text: str, key: str) -> str:
    """A file's text as the value of ``knob`` (its ``format``, see schedcpd.knobs)."""
    if knob.format == "selected":
        return next((w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")),
                    text)
    if knob.format == "keyed":
        if not key:
            raise KnobNotDeclared(f"knob {knob.name!r} is keyed: a read names the line's key")
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [key]), f"{key} 0")
        return " ".join(line.split())
    return text


def _key_of(knob: Knob, value: Any) -> str:
    """The line key of a ``keyed`` knob's value (``""`` for other knobs)."""
    return str(value).split()[0] if knob.format == "keyed" and value else ""


class KnobActuator:
    """Applies one plugin's change sets within its declarations, journaled."""

    def __init__(self, journal: Journal, subsystem: str,
                 knobs: Iterable[Knob | dict[str, Any]] = ()) -> None:
        self.journal = journal
        self.subsystem = subsystem
        self.knobs = declarations(knobs)
        self._lock = threading.RLock()

    # -- checks ----------------------------------------------------------

    def knob(self, name: str) -> Knob:
        """The declaration of ``name``; :class:`KnobNotDeclared` when there is none."""
        knob = self.knobs.get(name)
        if knob is None:
            raise KnobNotDeclared(f"{self.subsystem}: knob {name!r} is not declared "
                                  f"(declared: {', '.join(sorted(self.knobs)) or 'none'})")
        return knob

    def resolve(self, knob: Knob, target: str) -> str:
        """The canonical target of a change on ``knob``; refused or gone by name."""
        if knob.kind == FILE:
            if not isinstance(target, str) or not target.startswith("/") or "\0" in target:
                raise KnobNotDeclared(f"{self.subsystem}: knob {knob.name!r}: target "
                                      f"{target!r} is not an absolute path")
            real = os.path.realpath(target)
            if any(_matches(pattern, real) for pattern in knob.paths):
                return real
            if not os.path.lexists(target):
                raise TargetGone(f"{self.subsystem}: {target} was removed (it does not exist)")
            raise KnobNotDeclared(
                f"{self.subsystem}: {target} (really {real}) is not a file of knob "
                f"{knob.name!r} (declared: {', '.join(knob.paths)})")
        tid_text, _, start_text = target.partition(":")
        if not tid_text.isdigit() or not start_text.isdigit():
            raise KnobNotDeclared(f"{self.subsystem}: knob {knob.name!r}: target {target!r} "
                                  "is not '<tid>:<start time>'")
        if _start_time(int(tid_text)) != int(start_text):
            raise TargetGone(f"{self.subsystem}: thread {tid_text} (started at "
                             f"{start_text}) is gone")
        return f"{int(tid_text)}:{int(start_text)}"

    def check(self, change: KnobChange) -> tuple[Knob, str, Any]:
        """(knob, resolved target, normalised value) of an allowed change."""
        knob = self.knob(change.knob)
        target = self.resolve(knob, change.target)
        return knob, target, knob.check_value(change.value)

    # -- kernel access ---------------------------------------------------

    def read(self, knob_name: str, target: str, key: str = "") -> Any:
        """The live value of a declared target (:class:`TargetGone` when it is gone).

        ``key``: the line of a ``keyed`` file knob.
        """
        knob = self.knob(knob_name)
        return self._read(knob, self.resolve(knob, target), key)

    def _read(self, knob: Knob, target: str, key: str = "") -> Any:
        try:
            if knob.kind == FILE:
                with open(target, encoding="utf-8", errors="replace") as f:
                    return _parse(knob, f.read().strip(), key)
            return SYSCALLS[knob.syscall].read(int(target.split(":")[0]))
        except (FileNotFoundError, ProcessLookupError) as err:
            raise TargetGone(f"{self.subsystem}: {target} is gone: {err}") from err
        except KeyError as err:
            raise KnobNotDeclared(f"{self.subsystem}: knob {knob.name!r}: no syscall "
                                  f"{knob.syscall!r} in the core's table") from err
        except OSError as err:
            raise KernelRefused(f"{self.subsystem}: the kernel refused reading {knob.name} "
                                f"on {target}: {err.strerror or err}", err.errno or 0) from err

    def _write(self, knob: Knob, target: str, value: Any, restoring: bool = False) -> None:
        try:
            if knob.kind == FILE:
                fd = os.open(target, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.write(fd, str(value).encode())
                finally:
                    os.close(fd)
                return
            call = SYSCALLS[knob.syscall]
            tid = int(target.split(":")[0])
            if restoring and knob.restore == "reset" and call.reset is not None:
                call.reset(tid, value)
            else:
                call.write(tid, value)
        except (FileNotFoundError, ProcessLookupError) as err:
            raise TargetGone(f"{self.subsystem}: {target} is gone: {err}") from err
        except OSError as err:
            raise KernelRefused(f"{self.subsystem}: the kernel refused {knob.name} = "
                                f"{value!r} on {target}: {err.strerror or err}",
                                err.errno or 0) from err

    # -- change sets -----------------------------------------------------

    def apply(self, owner: str, changes: Iterable[KnobChange | dict[str, Any]]
              ) -> list[dict[str, Any]]:
        """Check every change, then write each in order; one outcome per change.

        An outcome is ``{"key", "target", "entry", "status", "before", "after",
        "note"}``; status ``applied``, ``unchanged`` (already the value) or
        ``skipped`` (target gone, recorded).  A refused change (not declared,
        bad value) raises before anything is written; a kernel refusal raises
        :class:`KernelRefused` after the changes before it were written (the
        caller restores the owner if it wants all or nothing).
        """
        items = [c if isinstance(c, KnobChange) else KnobChange.from_dict(c) for c in changes]
        with self._lock:
            checked: list[tuple[KnobChange, Knob | None, str, Any]] = []
            for change in items:
                try:
                    checked.append((change, *self.check(change)))
                except TargetGone as err:
                    checked.append((change, None, str(err), None))
            return [self._apply_one(owner, *item) for item in checked]

    def _apply_one(self, owner: str, change: KnobChange, knob: Knob | None, target: str,
                   value: Any) -> dict[str, Any]:
        key = change.key or f"{change.knob}:{target}"
        out: dict[str, Any] = {"key": key, "target": change.target, "entry": None,
                               "before": None, "after": value, "note": ""}
        if knob is None:
            return {**out, "status": SKIPPED, "note": target}
        line = _key_of(knob, value)
        try:
            prior = self._read(knob, target, line)
            siblings = self._siblings(knob, target)
        except TargetGone as err:
            return {**out, "status": SKIPPED, "note": str(err)}
        out["before"] = prior
        if prior == value:
            return {**out, "status": "unchanged"}
        # The files the write resets, journaled first: restore puts them back after it.
        held = [(sk, st, self.journal.record(owner, sk.name, f"{key}{RESET_MARK}{sk_file}",
                                             sk_prior, None, subsystem=self.subsystem,
                                             target=st, note=f"reset by {knob.name}"))
                for sk, st, sk_file, sk_prior in siblings]
        entry = self.journal.record(owner, knob.name, key, prior, value,
                                    subsystem=self.subsystem, target=target)
        out["entry"] = entry
        fault_point(f"{self.subsystem}_after_journal_commit")
        try:
            self._write(knob, target, value)
        except TargetGone as err:
            for e in (entry, *(h[2] for h in held)):
                self.journal.mark_skipped(e, f"not written: {err}")
            return {**out, "status": SKIPPED, "note": str(err)}
        except KernelRefused:
            for e in (entry, *(h[2] for h in held)):
                self.journal.mark_restored(e, "write refused by the kernel")
            raise
        fault_point(f"{self.subsystem}_after_write")
        try:
            live = self._read(knob, target, line)
        except TargetGone:
            live = value
        self.journal.mark_applied(entry, new=live)
        for sk, st, sk_entry in held:
            try:
                self.journal.mark_applied(sk_entry, new=self._read(sk, st))
            except TargetGone as err:
                self.journal.mark_skipped(sk_entry, str(err))
        return {**out, "after": live, "status": APPLIED}

    def _siblings(self, knob: Knob, target: str) -> list[tuple[Knob, str, str, Any]]:
        """(knob, target, file name, live value) of each declared file ``knob`` resets."""
        out = []
        for name in knob.resets:
            path = os.path.join(os.path.dirname(target), name)
            real = os.path.realpath(path)
            sibling = next((k for k in self.knobs.values() if k.kind == FILE and any(
                _matches(p, real) for p in k.paths)), None)
            if sibling is None:
                raise KnobNotDeclared(f"{self.subsystem}: knob {knob.name!r} resets {path}, "
                                      "which no declared knob covers")
            out.append((sibling, real, name, self._read(sibling, real)))
        return out

    def adopt(self, owner: str, changes: Iterable[KnobChange | dict[str, Any]],
              note: str = "inherited at fork") -> list[int]:
        """Journal values the kernel set by itself (a child inherits its parent's), applied.

        Each change's ``value`` is ours, already live on the target; its
        ``meta["prior"]`` is what restore puts back (the parent's prior).
        A change whose target is gone or whose live value is not ``value``
        is left out; a change outside the declarations is refused.  One
        commit for the whole set; returns the entry ids.
        """
        rows: list[tuple[str, str, Any, Any, str]] = []
        with self._lock:
            for item in changes:
                change = item if isinstance(item, KnobChange) else KnobChange.from_dict(item)
                if "prior" not in change.meta:
                    raise InvalidArgument(f"{self.subsystem}: an adopted change names its "
                                          "prior value (meta.prior)")
                try:
                    knob, target, value = self.check(change)
                    if self._read(knob, target, _key_of(knob, value)) != value:
                        continue
                except TargetGone:
                    continue
                rows.append((knob.name, change.key or f"{knob.name}:{target}",
                             knob.check_value(change.meta["prior"]), value, target))
            return self.journal.record_inherited(owner, rows, subsystem=self.subsystem,
                                                 note=note) if rows else []

    # -- restore and overrides -------------------------------------------

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Restore the open entries of ``owner`` (all owners: ``None``), newest first.

        Only entries this actuator wrote (they carry a ``target``); a plugin
        that still writes some values itself restores those itself.  The
        files a knob resets (``resets``) are restored right after it.
        """
        entries: list[dict[str, Any]] = []
        summary: dict[str, int] = {}

        def note(entry: JournalEntry, outcome: str, text: str) -> None:
            summary[outcome] = summary.get(outcome, 0) + 1
            entries.append(report_row(entry, outcome, text))

        with self._lock:
            done: set[int] = set()
            for entry in self.journal.pending_restore(owner=owner, subsystem=self.subsystem):
                if not entry.target or entry.id in done or self._deferred(entry):
                    continue
                resets = self._reset_entries(entry)
                before = {e.id: self._peek(e) for e in resets}
                outcome, text, wrote = self._restore_one(entry)
                note(entry, outcome, text)
                for sibling in resets if outcome != APPLIED else ():  # kept open: both
                    done.add(sibling.id)
                    if wrote:
                        note(sibling, *self._restore_reset(sibling, before[sibling.id]))
                    else:
                        note(sibling, *self._restore_one(sibling)[:2])
        return {"entries": entries, "summary": summary}

    def _deferred(self, entry: JournalEntry) -> bool:
        """A reset file's entry whose knob's entry is open: restored with that one."""
        main, mark, _ = entry.key.partition(RESET_MARK)
        return bool(mark) and any(e.owner == entry.owner for e in self.journal.for_key(
            main, subsystem=self.subsystem))

    def _reset_entries(self, entry: JournalEntry) -> list[JournalEntry]:
        """The newest open entry of each file ``entry``'s knob resets."""
        knob = self.knobs.get(entry.kind)
        out = []
        for name in knob.resets if knob else ():
            found = [e for e in self.journal.for_key(f"{entry.key}{RESET_MARK}{name}",
                                                     subsystem=self.subsystem)
                     if e.owner == entry.owner]
            out += found[:1]
        return out

    def _peek(self, entry: JournalEntry) -> Any:
        try:
            return self.live(entry)
        except (TargetGone, KnobNotDeclared, KernelRefused):
            return None

    def _restore_reset(self, entry: JournalEntry, before: Any) -> tuple[str, str]:
        """Put a reset file back after its knob's restore reset it again."""
        if entry.state != PENDING and before not in (entry.new, entry.prior):
            note = (f"changed by someone else to {before!r} before the restore (which "
                    "reset it); left as the kernel set it")
            self.journal.mark_overridden(entry.id, note)
            return OVERRIDDEN, note
        return self._restore_one(entry, ours=True)[:2]

    def _restore_one(self, entry: JournalEntry, ours: bool = False) -> tuple[str, str, bool]:
        """(outcome, note, whether the prior value was written): the journal's rule."""

        def put_back(prior: Any) -> None:
            knob = self.knob(entry.kind)
            self._write(knob, self._target(entry), prior, restoring=True)

        return restore_entry(self.journal, entry, None if ours else lambda: self.live(entry),
                             put_back, self.subsystem)

    def _target(self, entry: JournalEntry) -> str:
        """The entry's target, still declared and resolving to itself."""
        knob = self.knob(entry.kind)
        target = self.resolve(knob, entry.target)
        if target != entry.target:
            raise KnobNotDeclared(f"{entry.target} now resolves to {target}")
        return target

    def live(self, entry: JournalEntry) -> Any:
        """The live value behind a journal entry of ours (:class:`TargetGone` if gone)."""
        knob = self.knob(entry.kind)
        return self._read(knob, self._target(entry), _key_of(knob, entry.new or entry.prior))

    def overridden(self) -> list[dict[str, Any]]:
        """Applied entries whose live value someone else changed (marked overridden now).

        Only the newest open entry of a target is compared: an older one (a
        value we wrote again, or a depth a later knob of ours changed) is
        ours as long as the newest is.
        """
        out, seen = [], set()
        with self._lock:
            for entry in self.journal.pending_restore(subsystem=self.subsystem):
                knob = self.knobs.get(entry.kind)
                spot = (entry.target, _key_of(knob, entry.new or entry.prior) if knob else "")
                if not entry.target or spot in seen:
                    continue
                seen.add(spot)
                found = override_of(self.journal, entry, functools.partial(self.live, entry))
                if found is not None:
                    out.append(found)
        return out
