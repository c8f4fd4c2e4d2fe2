"""Journaled writes of dvfs knobs, and their exact restore.

Every write follows the journal's protocol: the prior value is committed
(``Journal.record``), then the kernel value is written, then the entry is
marked applied.  Restore walks an owner's open entries newest first and
puts ``prior`` back only where the live value is still what we wrote (or
already ``prior``); a value someone else changed is left alone and marked
``overridden``; a target that is gone (cpufreq policy removed, task exited,
cgroup removed) is marked ``skipped`` with the reason.

Journal keys (kinds): ``cpufreq:<policyN>:<file>`` (``cpufreq``; file is
``scaling_governor``, ``energy_performance_preference``,
``scaling_min_freq`` or ``scaling_max_freq``), ``boost:cpufreq`` or
``boost:intel_pstate`` (``boost``; the file's own text), ``uclamp:<tid>:<start>``
(``uclamp``; ``[min, max]``) and ``cg_uclamp:<path>:<file>`` (``cg_uclamp``;
the text of ``cpu.uclamp.min``/``max``, path relative to the cgroup v2 root).

Fault injection for the crash tests: ``SCHEDCP_FAULT=dvfs_after_journal_commit``
(or ``dvfs_after_write``, optionally ``:N``) SIGKILLs the process there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from plugins.dvfs import cpufreq, uclamp
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
SUBSYSTEM = "dvfs"


class Gone(Exception):
    """The target of a write is gone (policy removed, task exited, cgroup removed)."""


class Actuator:
    """The only code of the dvfs plugin that writes kernel state."""

    def __init__(self, journal: Journal, freq: cpufreq.CpuFreq,
                 cgroup_root: Path | None) -> None:
        self.journal = journal
        self.freq = freq
        self.cgroup_root = cgroup_root

    def _cg_file(self, key: str) -> Path:
        _, rel, name = key.split(":", 2)
        if self.cgroup_root is None or name not in uclamp.CGROUP_FILES:
            raise Gone(f"no cgroup v2 hierarchy for {key}")
        path = uclamp.cgroup_path(self.cgroup_root, rel)
        if not path.is_dir():
            raise Gone(f"cgroup {rel} was removed")
        return path / name

    def live(self, kind: str, key: str) -> Any:
        """The live value behind a journal key; :class:`Gone` when its target is gone."""
        try:
            if kind == "cpufreq":
                _, pol, knob = key.split(":", 2)
                return self.freq.read(pol, knob)
            if kind == "boost":
                return self.freq.boost_file(key).read_text().strip()
            if kind == "uclamp":
                _, tid, start = key.split(":")
                if uclamp.start_time(int(tid)) != int(start):
                    raise Gone(f"task {tid} exited")
                return list(uclamp.get(int(tid)))
            if kind == "cg_uclamp":
                return self._cg_file(key).read_text().strip()
        except (cpufreq.CpuFreqError, uclamp.TaskGone, FileNotFoundError) as err:
            raise Gone(str(err)) from err
        raise ValueError(f"unknown dvfs journal kind {kind!r}")

    def _write(self, kind: str, key: str, value: Any, restoring: bool = False) -> None:
        try:
            if kind == "cpufreq":
                _, pol, knob = key.split(":", 2)
                if knob not in cpufreq.POLICY_KNOBS:
                    raise ValueError(f"{knob} is not a file the dvfs plugin writes")
                self.freq.write(pol, knob, str(value))
            elif kind == "boost":
                path = self.freq.boost_file(key)
                if not path.is_file():
                    raise Gone(f"{path} is gone")
                path.write_text(str(value))
            elif kind == "uclamp":
                lo, hi = (int(v) for v in value)
                args = uclamp.restore_args((lo, hi)) if restoring else (lo, hi)
                uclamp.set_(int(key.split(":")[1]), *args)
            elif kind == "cg_uclamp":
                self._cg_file(key).write_text(str(value))
            else:
                raise ValueError(f"unknown dvfs journal kind {kind!r}")
        except (cpufreq.CpuFreqError, uclamp.TaskGone) as err:
            raise Gone(str(err)) from err

    def write(self, owner: str, kind: str, key: str, prior: Any, new: Any) -> int:
        """Journal ``prior``, write ``new``, mark applied; :class:`Gone` (entry skipped)."""
        entry = self.journal.record(owner, kind, key, prior, new, subsystem=SUBSYSTEM)
        fault_point("dvfs_after_journal_commit")
        try:
            self._write(kind, key, new)
        except Gone as err:
            self.journal.mark_skipped(entry, f"not written: {err}")
            raise
        except OSError:
            # Refused by the kernel: nothing changed; the entry holds nothing of ours.
            self.journal.mark_restored(entry, "write refused by the kernel")
            raise
        fault_point("dvfs_after_write")
        if kind in ("cg_uclamp", "cpufreq"):
            # The kernel rounds (12.5 -> "12.50"; a frequency to a table step): keep its value.
            try:
                self.journal.mark_applied(entry, new=self.live(kind, key))
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
            live = self.live(entry.kind, entry.key)
            if live == entry.prior:
                self.journal.mark_restored(entry.id, "already at the prior value")
                return RESTORED, "already at the prior value"
            if live != entry.new:
                note = f"changed by someone else to {live!r}; left alone"
                self.journal.mark_overridden(entry.id, note)
                return OVERRIDDEN, note
            self._write(entry.kind, entry.key, entry.prior, restoring=True)
        except Gone as err:
            self.journal.mark_skipped(entry.id, str(err))
            return SKIPPED, str(err)
        except OSError as err:
            _LOGGER.warning("dvfs restore of %s failed: %s", entry.key, err)
            return APPLIED, f"restore failed: {err}; kept open"
        self.journal.mark_restored(entry.id)
        return RESTORED, ""

    def overridden(self) -> list[dict[str, Any]]:
        """Applied entries whose live value someone else changed (marked overridden now)."""
        out = []
        for entry in self.journal.pending_restore(subsystem=SUBSYSTEM):
            if entry.state != APPLIED:
                continue
            try:
                live = self.live(entry.kind, entry.key)
            except Gone:
                continue
            if live != entry.new:
                note = f"changed by someone else to {live!r}; no longer managed"
                self.journal.mark_overridden(entry.id, note)
                out.append({"key": entry.key, "owner": entry.owner, "live": live,
                            "ours": entry.new, "state": OVERRIDDEN})
        return out
