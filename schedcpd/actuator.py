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
one bad change writes nothing.  Restore walks an owner's open entries newest
first and puts the prior value back only where the live value is still what
we wrote; a value someone else changed is left alone (``overridden``); a
target that is gone is ``skipped``.  Restores are checked against the
declarations too (the target must still be a declared one).

The actuator knows files and the syscalls of :mod:`schedcpd.syscalls`; it
knows nothing of any subsystem.  Fault injection for crash tests:
``SCHEDCP_FAULT=<subsystem>_after_journal_commit`` / ``<subsystem>_after_write``.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from schedcpd.analysis import procfs
from schedcpd.errors import InvalidArgument, NotFound
from schedcpd.faults import fault_point
from schedcpd.journal import APPLIED, OVERRIDDEN, RESTORED, SKIPPED, Journal, JournalEntry
from schedcpd.knobs import FILE, Knob, KnobChange, KnobNotDeclared, declarations
from schedcpd.syscalls import SYSCALLS

_LOGGER = logging.getLogger(__name__)


class TargetGone(NotFound):
    """The target of a change is gone (file removed, thread exited)."""

    name = "TargetGone"


class KernelRefused(InvalidArgument):
    """The kernel refused a write (``errno`` says why); nothing of ours is left there."""

    name = "KernelRefused"

    def __init__(self, message: str = "", errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


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
                raise TargetGone(f"{self.subsystem}: {target} does not exist")
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

    def read(self, knob_name: str, target: str) -> Any:
        """The live value of a declared target (:class:`TargetGone` when it is gone)."""
        knob = self.knob(knob_name)
        return self._read(knob, self.resolve(knob, target))

    def _read(self, knob: Knob, target: str) -> Any:
        try:
            if knob.kind == FILE:
                with open(target, encoding="utf-8", errors="replace") as f:
                    return f.read().strip()
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
        try:
            prior = self._read(knob, target)
        except TargetGone as err:
            return {**out, "status": SKIPPED, "note": str(err)}
        out["before"] = prior
        if prior == value:
            return {**out, "status": "unchanged"}
        entry = self.journal.record(owner, knob.name, key, prior, value,
                                    subsystem=self.subsystem, target=target)
        out["entry"] = entry
        fault_point(f"{self.subsystem}_after_journal_commit")
        try:
            self._write(knob, target, value)
        except TargetGone as err:
            self.journal.mark_skipped(entry, f"not written: {err}")
            return {**out, "status": SKIPPED, "note": str(err)}
        except KernelRefused:
            self.journal.mark_restored(entry, "write refused by the kernel")
            raise
        fault_point(f"{self.subsystem}_after_write")
        try:
            live = self._read(knob, target)
        except TargetGone:
            live = value
        self.journal.mark_applied(entry, new=live)
        return {**out, "after": live, "status": APPLIED}

    # -- restore and overrides -------------------------------------------

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Restore the open entries of ``owner`` (all owners: ``None``), newest first.

        Only entries this actuator wrote (they carry a ``target``); a plugin
        that still writes some values itself restores those itself.
        """
        entries = []
        summary: dict[str, int] = {}
        with self._lock:
            for entry in self.journal.pending_restore(owner=owner, subsystem=self.subsystem):
                if not entry.target:
                    continue  # written by the plugin itself (not ported to declared knobs)
                outcome, note = self._restore_one(entry)
                summary[outcome] = summary.get(outcome, 0) + 1
                entries.append({"id": entry.id, "key": entry.key, "kind": entry.kind,
                                "outcome": outcome, "note": note})
        return {"entries": entries, "summary": summary}

    def _restore_one(self, entry: JournalEntry) -> tuple[str, str]:
        try:
            knob = self.knob(entry.kind)
            target = self.resolve(knob, entry.target)
            if target != entry.target:
                raise KnobNotDeclared(f"{entry.target} now resolves to {target}")
            live = self._read(knob, target)
            if live == entry.prior:
                self.journal.mark_restored(entry.id, "already at the prior value")
                return RESTORED, "already at the prior value"
            if live != entry.new:
                note = f"changed by someone else to {live!r}; left alone"
                self.journal.mark_overridden(entry.id, note)
                return OVERRIDDEN, note
            self._write(knob, target, entry.prior, restoring=True)
        except TargetGone as err:
            self.journal.mark_skipped(entry.id, str(err))
            return SKIPPED, str(err)
        except (KnobNotDeclared, KernelRefused) as err:
            _LOGGER.warning("%s restore of %s refused: %s", self.subsystem, entry.key, err)
            return APPLIED, f"restore refused: {err}; kept open"
        self.journal.mark_restored(entry.id)
        return RESTORED, ""

    def live(self, entry: JournalEntry) -> Any:
        """The live value behind a journal entry of ours (:class:`TargetGone` if gone)."""
        knob = self.knob(entry.kind)
        return self._read(knob, self.resolve(knob, entry.target))

    def overridden(self) -> list[dict[str, Any]]:
        """Applied entries whose live value someone else changed (marked overridden now)."""
        out = []
        with self._lock:
            for entry in self.journal.pending_restore(subsystem=self.subsystem):
                if entry.state != APPLIED or not entry.target:
                    continue
                try:
                    live = self.live(entry)
                except (TargetGone, KnobNotDeclared):
                    continue
                if live != entry.new:
                    note = f"changed by someone else to {live!r}; no longer managed"
                    self.journal.mark_overridden(entry.id, note)
                    out.append({"key": entry.key, "owner": entry.owner, "live": live,
                                "ours": entry.new, "state": OVERRIDDEN})
        return out
