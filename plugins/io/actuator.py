"""Journaled writes of io knobs, and their exact restore.

Every write follows the journal's protocol: the prior value is committed
(``Journal.record``), then the kernel value is written, then the entry is
marked applied.  Restore walks an owner's open entries newest first and
puts ``prior`` back only where the live value is still what we wrote (or
already ``prior``); a value someone else changed is left alone and marked
``overridden``; a target that is gone (device removed, task exited) is
marked ``skipped`` with the reason.

Journal keys (kinds): ``queue:<dev>:<MAJ:MIN>:<knob>`` (``queue``; ``sched``
for ``scheduler``, whose prior also saves ``nr_requests``, which a scheduler switch resets),
``ioprio:<tid>:<start>`` (``ioprio``), ``blkio_dir:<path>`` (``mkdir``),
``blkio_move:<pid>:<start>`` (``move``) and
``blkio:<path>:<file>:<MAJ:MIN>`` (``throttle``) and
``sysctl:kernel.task_delayacct`` (``sysctl``).

Fault injection for the crash tests: ``SCHEDCP_FAULT=io_after_journal_commit``
(or ``io_after_write``, optionally ``:N`` for the N-th write) SIGKILLs the
daemon at that point; the daemon drops the variable unless ``[debug]
fault_injection`` is on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from plugins.io import blkio, blockdev, ioprio
from schedcpd.plugin_api import (
    APPLIED,
    OVERRIDDEN,
    RESTORED,
    SKIPPED,
    Journal,
    JournalEntry,
    fault_point,
)

_LOGGER = logging.getLogger(__name__)
SUBSYSTEM = "io"


SYSCTLS = ("kernel.task_delayacct",)
"""The sysctls the io plugin writes (delay accounting, for its guards)."""


def _sysctl(key: str) -> Path:
    name = key.split(":", 1)[1]
    if name not in SYSCTLS:
        raise ValueError(f"sysctl {name!r} is not one the io plugin writes")
    return Path("/proc/sys") / name.replace(".", "/")


class Gone(Exception):
    """The target of a write is gone (device removed, task exited)."""


def _main(value: Any) -> Any:
    """The compared part of a saved value (a scheduler entry saves nr_requests too)."""
    return value["scheduler"] if isinstance(value, dict) else value


def _live(entry: JournalEntry) -> Any:
    """The live value behind a journal entry; :class:`Gone` when its target is gone."""
    kind, key = entry.kind, entry.key
    try:
        if kind in ("queue", "sched"):
            _, dev, majmin, knob = key.split(":", 3)
            if blockdev.identity(dev) != majmin.replace("_", ":"):
                raise Gone(f"device {dev} ({majmin.replace('_', ':')}) was removed")
            return blockdev.current(dev, knob)
        if kind == "ioprio":
            _, tid, start = key.split(":")
            if ioprio.start_time(int(tid)) != int(start):
                raise Gone(f"task {tid} exited")
            return ioprio.get(int(tid))
        if kind == "move":
            _, pid, start = key.split(":")
            if ioprio.start_time(int(pid)) != int(start):
                raise Gone(f"process {pid} exited")
            return blkio.cgroup_of(int(pid))
        if kind == "mkdir":
            return entry.new if Path(entry.new).is_dir() else None
        if kind == "sysctl":
            return _sysctl(key).read_text().strip()
        if kind == "throttle":
            _, path, name, majmin = key.split(":", 3)
            if not Path(path).is_dir():
                raise Gone(f"cgroup {path} was removed")
            return blkio.read_limit(Path(path), name, majmin.replace("_", ":"))
    except (blockdev.DeviceGone, ioprio.TaskGone) as err:
        raise Gone(str(err)) from err
    raise ValueError(f"unknown io journal kind {kind!r}")


def _write(kind: str, key: str, value: Any) -> None:
    try:
        if kind == "queue":
            _, dev, majmin, knob = key.split(":", 3)
            blockdev.write(dev, knob, str(value), majmin.replace("_", ":"))
        elif kind == "sched":
            # Switching the scheduler resets nr_requests: a restore puts both back.
            _, dev, majmin, _ = key.split(":", 3)
            ident = majmin.replace("_", ":")
            blockdev.write(dev, "scheduler", str(_main(value)), ident)
            if isinstance(value, dict) and value.get("nr_requests"):
                blockdev.write(dev, "nr_requests", str(value["nr_requests"]), ident)
        elif kind == "ioprio":
            ioprio.set_(int(key.split(":")[1]), int(value))
        elif kind == "move":
            blkio.move(int(key.split(":")[1]), str(value))
        elif kind == "mkdir":
            if value is None:
                blkio.remove_dir(Path(key.split(":", 1)[1]))
            else:
                Path(value).mkdir(exist_ok=True)
        elif kind == "sysctl":
            _sysctl(key).write_text(str(value))
        elif kind == "throttle":
            _, path, name, majmin = key.split(":", 3)
            blkio.write_limit(Path(path), name, majmin.replace("_", ":"), int(value))
        else:
            raise ValueError(f"unknown io journal kind {kind!r}")
    except (blockdev.DeviceGone, ioprio.TaskGone) as err:
        raise Gone(str(err)) from err


class Actuator:
    """The only code of the io plugin that writes kernel state."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def write(self, owner: str, kind: str, key: str, prior: Any, new: Any) -> int:
        """Journal ``prior``, write ``new``, mark applied; :class:`Gone` (entry skipped)."""
        entry = self.journal.record(owner, kind, key, prior, new, subsystem=SUBSYSTEM)
        fault_point("io_after_journal_commit")
        try:
            _write(kind, key, new)
        except Gone as err:
            self.journal.mark_skipped(entry, f"not written: {err}")
            raise
        except OSError:
            # Refused by the kernel: nothing changed; the entry holds nothing of ours.
            self.journal.mark_restored(entry, "write refused by the kernel")
            raise
        fault_point("io_after_write")
        if kind == "queue":  # the kernel may round (read_ahead_kb to pages): keep what it holds
            try:
                self.journal.mark_applied(entry, new=_live(self.journal.get(entry)))
                return entry
            except Gone:
                pass
        self.journal.mark_applied(entry)
        return entry

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Restore the open entries of ``owner`` (all owners: ``None``), newest first."""
        entries = []
        summary: dict[str, int] = {}
        for entry in self.journal.pending_restore(owner=owner, subsystem=SUBSYSTEM):
            outcome, note = self._restore_one(entry)
            summary[outcome] = summary.get(outcome, 0) + 1
            entries.append({"id": entry.id, "key": entry.key, "kind": entry.kind,
                            "outcome": outcome, "note": note})
        return {"entries": entries, "summary": summary}

    def _restore_one(self, entry: JournalEntry) -> tuple[str, str]:
        try:
            live = _live(entry)
            if entry.kind == "sched" and live == _main(entry.prior) and \
                    blockdev.current(entry.key.split(":")[1], "nr_requests") \
                    != str(entry.prior.get("nr_requests")):
                live = entry.new  # the scheduler is back, nr_requests not yet
            if live == _main(entry.prior):
                self.journal.mark_restored(entry.id, "already at the prior value")
                return RESTORED, "already at the prior value"
            if live != entry.new:
                note = f"changed by someone else to {live!r}; left alone"
                self.journal.mark_overridden(entry.id, note)
                return OVERRIDDEN, note
            _write(entry.kind, entry.key, entry.prior)
        except Gone as err:
            self.journal.mark_skipped(entry.id, str(err))
            return SKIPPED, str(err)
        except OSError as err:
            _LOGGER.warning("io restore of %s failed: %s", entry.key, err)
            return APPLIED, f"restore failed: {err}; kept open"
        self.journal.mark_restored(entry.id)
        return RESTORED, ""

    def overridden(self) -> list[dict[str, Any]]:
        """Applied entries whose live value someone else changed (marked overridden now)."""
        out = []
        for entry in self.journal.pending_restore(subsystem=SUBSYSTEM):
            if entry.state != APPLIED or entry.kind == "mkdir":
                continue
            try:
                live = _live(entry)
            except Gone:
                continue
            if live != entry.new:
                note = f"changed by someone else to {live!r}; no longer managed"
                self.journal.mark_overridden(entry.id, note)
                out.append({"key": entry.key, "owner": entry.owner, "live": live,
                            "ours": entry.new, "state": OVERRIDDEN})
        return out
