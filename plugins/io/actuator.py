"""The io plugin's writes: declared knobs through the core's actuator; cgroup moves its own.

Device queue settings, the I/O scheduler, task I/O priority, the
delay-accounting sysctl and blkio throttle limits are declared knobs
(:mod:`plugins.io.knobs`): each planned write becomes a
:class:`~schedcpd.plugin_api.KnobChange` for the core's
:class:`~schedcpd.plugin_api.KnobActuator`, which checks, journals, writes,
restores exactly and detects overrides (and, for a scheduler switch, puts
``nr_requests`` back after restoring the scheduler).

What no knob can express stays here: creating a blkio cgroup directory
(kind ``mkdir``; restore removes it) and moving a process into it (kind
``move``; the value read is ``/proc/<pid>/cgroup``, the file written the
cgroup's ``cgroup.procs``).  Those follow the same journal rules with the
core's own functions (:func:`~schedcpd.plugin_api.journaled_write`,
:func:`~schedcpd.plugin_api.restore_entry`,
:func:`~schedcpd.plugin_api.override_of`), not a copy of them.  A restore
runs the core's part first (throttle limits while the cgroup still exists),
then moves the processes back and removes the directories.

Journal keys (kinds): ``queue:<dev>:<MAJ_MIN>:<knob>`` (``queue``;
``sched`` for ``scheduler``, its ``nr_requests`` under
``<key>|reset:nr_requests``), ``ioprio:<tid>:<start>`` (``ioprio``),
``sysctl:kernel.task_delayacct`` (``sysctl``),
``blkio:<path>:<file>:<MAJ_MIN>`` (``throttle``), ``blkio_dir:<path>``
(``mkdir``) and ``blkio_move:<pid>:<start>`` (``move``).  Entries an older
version wrote itself are handed to the core at start-up (:func:`legacy`).

Fault injection for the crash tests: ``SCHEDCP_FAULT=io_after_journal_commit``
(or ``io_after_write``, optionally ``:N`` for the N-th write) SIGKILLs the
daemon at that point; the daemon drops the variable unless ``[debug]
fault_injection`` is on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugins.io import blkio, blockdev, ioprio
from plugins.io.knobs import DELAYACCT, IOPRIO, QUEUE, SCHED, SYSCTL, THROTTLE
from schedcpd.plugin_api import (
    SKIPPED,
    Journal,
    JournalEntry,
    KnobActuator,
    KnobChange,
    TargetGone,
    journaled_write,
    merge_reports,
    override_of,
    report_row,
    restore_entry,
)

SUBSYSTEM = "io"
OWN = ("mkdir", "move")
"""Kinds the plugin writes itself (no knob can express them)."""


def _device_file(key: str) -> str:
    """The queue file of a ``queue:<dev>:<MAJ_MIN>:<knob>`` key, if the device is still it."""
    _, dev, majmin, knob = key.split(":", 3)
    if blockdev.identity(dev) != majmin.replace("_", ":"):
        raise TargetGone(f"device {dev} ({majmin.replace('_', ':')}) was removed")
    return str(blockdev.knob_path(dev, knob))


def _throttle(key: str, value: Any) -> tuple[str, str]:
    """(file, ``MAJ:MIN value`` line) of a ``blkio:<path>:<file>:<MAJ_MIN>`` key."""
    _, path, name, majmin = key.split(":", 3)
    line = "" if value is None else f"{majmin.replace('_', ':')} {int(value)}"
    return str(Path(path) / blkio.FILES[name]), line


def change(kind: str, key: str, value: Any) -> KnobChange:
    """The change (declared knob, target, value) behind a planned write."""
    if kind in (QUEUE, SCHED):
        return KnobChange(kind, _device_file(key), value, key)
    if kind == IOPRIO:
        _, tid, start = key.split(":")
        return KnobChange(IOPRIO, f"{int(tid)}:{int(start)}", value, key)
    if kind == SYSCTL:
        return KnobChange(SYSCTL, DELAYACCT, value, key)
    if kind == THROTTLE:
        return KnobChange(THROTTLE, *_throttle(key, value), key)
    raise ValueError(f"unknown io write kind {kind!r}")


def legacy(journal: Journal, entry: JournalEntry) -> tuple[str, str, Any, Any] | None:
    """The hand-over of an older version's open entries to the core (``hand_over_legacy``).

    A ``sched`` entry saved ``{"scheduler", "nr_requests"}`` as its prior:
    the depth becomes an entry of its own under the core's reset key, which
    the core restores right after the scheduler.  An entry whose device name
    now stands for another device is closed as skipped.
    """
    if entry.kind in OWN:
        return None
    try:
        if entry.kind == THROTTLE:
            path, prior = _throttle(entry.key, entry.prior)
            return THROTTLE, os.path.realpath(path), prior, _throttle(entry.key, entry.new)[1]
        target = change(entry.kind, entry.key, None).target
        if entry.kind != IOPRIO:
            target = os.path.realpath(target)
    except TargetGone as err:
        journal.mark_skipped(entry.id, f"at the hand-over to the core: {err}")
        return None
    if entry.kind == SCHED and isinstance(entry.prior, dict):
        depth = os.path.join(os.path.dirname(target), "nr_requests")
        journal.record(entry.owner, QUEUE, f"{entry.key}|reset:nr_requests",
                       str(entry.prior.get("nr_requests")), None, subsystem=SUBSYSTEM,
                       target=os.path.realpath(depth), note="handed over")
        return SCHED, target, entry.prior["scheduler"], entry.new
    if entry.kind in (QUEUE, SCHED, IOPRIO, SYSCTL):
        return entry.kind, target, entry.prior, entry.new
    return None


def _own(entry_kind: str, key: str, new: Any) -> tuple[Callable[[], Any],
                                                        Callable[[Any], None]]:
    """(read the live value, write a value) of a ``mkdir`` or ``move`` entry."""
    if entry_kind == "mkdir":
        path = Path(key.split(":", 1)[1])
        return (lambda: new if path.is_dir() else None,
                lambda v: blkio.remove_dir(path) if v is None else path.mkdir(exist_ok=True))
    _, pid, start = key.split(":")

    def live() -> str:
        try:
            if ioprio.start_time(int(pid)) != int(start):
                raise FileNotFoundError
            return blkio.cgroup_of(int(pid))
        except (FileNotFoundError, ProcessLookupError) as err:
            raise TargetGone(f"process {pid} exited") from err

    def move(value: Any) -> None:
        try:
            blkio.move(int(pid), str(value))
        except ProcessLookupError as err:
            raise TargetGone(f"process {pid} exited") from err
    return live, move


class Actuator:
    """The io plugin's writes: the core's for declared knobs, its own for cgroup moves."""

    def __init__(self, journal: Journal, core: KnobActuator) -> None:
        self.journal = journal
        self.core = core

    def write(self, owner: str, kind: str, key: str, prior: Any, new: Any) -> int | None:
        """Write one planned value; the journal entry id (``None``: already the value).

        :class:`TargetGone` when the target is gone (entry skipped);
        ``KernelRefused`` (``OSError`` for a move or directory) when refused.
        """
        if kind in OWN:
            return journaled_write(self.journal, owner, kind, key, prior, new,
                                   _own(kind, key, new)[1], SUBSYSTEM)
        (out,) = self.core.apply(owner, [change(kind, key, new)])
        if out["status"] == SKIPPED:
            raise TargetGone(out["note"])
        return out["entry"]

    def _mine(self, owner: str | None) -> list[JournalEntry]:
        return [e for e in self.journal.pending_restore(owner=owner, subsystem=SUBSYSTEM)
                if e.kind in OWN and not e.target]

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Restore ``owner``'s values (all owners: ``None``): the core's, then the moves."""
        core = self.core.restore(owner)
        rows = []
        for entry in self._mine(owner):
            live, put_back = _own(entry.kind, entry.key, entry.new)
            outcome, note, _ = restore_entry(self.journal, entry, live, put_back, SUBSYSTEM)
            rows.append(report_row(entry, outcome, note))
        return merge_reports(core, {"entries": rows, "summary": {}})

    def overridden(self) -> list[dict[str, Any]]:
        """Applied values someone else changed (marked overridden now)."""
        out = self.core.overridden()
        for entry in self._mine(None):
            if entry.kind == "move":
                found = override_of(self.journal, entry, _own(entry.kind, entry.key,
                                                               entry.new)[0])
                out += [found] if found else []
        return out
