"""The dvfs plugin's writes: files through the core's actuator, task clamps itself.

cpufreq, boost and cgroup clamp files are declared knobs
(:mod:`plugins.dvfs.knobs`): each write is a change handed to the core's
:class:`~schedcpd.plugin_api.KnobActuator`, which checks it against the
declarations, journals the prior value, writes, and restores exactly
(override detection included).  The plugin writes no file itself.

Task clamps (``sched_setattr``) are still written here, following the
journal's protocol: the prior value is committed (``Journal.record``), then
the clamp is set, then the entry is marked applied; restore puts ``prior``
back only where the live value is still ours.  (Not yet ported: this
kernel has no ``CONFIG_UCLAMP_TASK``, see :mod:`plugins.dvfs.knobs`.)

Journal keys: ``cpufreq:<policyN>:<file>`` (kind ``cpufreq.<file>``),
``boost:cpufreq`` or ``boost:intel_pstate`` (kind ``boost``),
``cg_uclamp:<path>:<file>`` (kind ``cg_uclamp``; path relative to the cgroup
v2 root), all with the written file's real path as ``target``; and
``uclamp:<tid>:<start>`` (kind ``uclamp``; ``[min, max]``, no target).

Fault injection for the crash tests: ``SCHEDCP_FAULT=dvfs_after_journal_commit``
(or ``dvfs_after_write``, optionally ``:N``) SIGKILLs the process there (the
core's actuator and this module fire the same names).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from plugins.dvfs import cpufreq, uclamp
from plugins.dvfs.knobs import BOOST, CG_UCLAMP, KIND_OF_FILE
from schedcpd.plugin_api import (
    APPLIED,
    OVERRIDDEN,
    RESTORED,
    SKIPPED,
    Journal,
    JournalEntry,
    KnobActuator,
    KnobChange,
    TargetGone,
    fault_point,
)

_LOGGER = logging.getLogger(__name__)
SUBSYSTEM = "dvfs"


class Gone(Exception):
    """The target of a write is gone (policy removed, task exited, cgroup removed)."""


class Actuator:
    """The dvfs plugin's view of its writes: files go to the core, task clamps are its own."""

    def __init__(self, journal: Journal, freq: cpufreq.CpuFreq,
                 cgroup_root: Path | None, core: KnobActuator) -> None:
        self.journal = journal
        self.freq = freq
        self.cgroup_root = cgroup_root
        self.core = core

    def _cg_file(self, key: str) -> Path:
        _, rel, name = key.split(":", 2)
        if self.cgroup_root is None or name not in uclamp.CGROUP_FILES:
            raise Gone(f"no cgroup v2 hierarchy for {key}")
        path = uclamp.cgroup_path(self.cgroup_root, rel)
        if not path.is_dir():
            raise Gone(f"cgroup {rel} was removed")
        return path / name

    def file_change(self, kind: str, key: str, value: Any) -> KnobChange:
        """The change (declared knob, file, value) behind a planned file write."""
        if kind == "cpufreq":
            _, pol, name = key.split(":", 2)
            if name not in KIND_OF_FILE:
                raise ValueError(f"{name} is not a file the dvfs plugin writes")
            return KnobChange(KIND_OF_FILE[name], str(self.freq.path(pol, name)), value, key)
        if kind == "boost":
            return KnobChange(BOOST, str(self.freq.boost_file(key)), value, key)
        if kind == "cg_uclamp":
            return KnobChange(CG_UCLAMP, str(self._cg_file(key)), value, key)
        raise ValueError(f"unknown dvfs write kind {kind!r}")

    def live(self, kind: str, key: str) -> Any:
        """The live value behind a write; :class:`Gone` when its target is gone."""
        try:
            if kind == "uclamp":
                _, tid, start = key.split(":")
                if uclamp.start_time(int(tid)) != int(start):
                    raise Gone(f"task {tid} exited")
                return list(uclamp.get(int(tid)))
            change = self.file_change(kind, key, None)
            return self.core.read(change.knob, change.target)
        except (uclamp.TaskGone, TargetGone) as err:
            raise Gone(str(err)) from err

    def _set_clamp(self, key: str, value: Any, restoring: bool = False) -> None:
        lo, hi = (int(v) for v in value)
        args = uclamp.restore_args((lo, hi)) if restoring else (lo, hi)
        try:
            uclamp.set_(int(key.split(":")[1]), *args)
        except uclamp.TaskGone as err:
            raise Gone(str(err)) from err

    def write(self, owner: str, kind: str, key: str, prior: Any, new: Any) -> int | None:
        """Write one planned value; the journal entry id (``None``: already the value).

        Files: a change set of one, through the core (which reads the prior
        value itself).  :class:`Gone` when the target is gone (entry skipped);
        ``KernelRefused`` (or ``OSError`` for a clamp) when the kernel refuses.
        """
        if kind != "uclamp":
            (out,) = self.core.apply(owner, [self.file_change(kind, key, new)])
            if out["status"] == SKIPPED:
                raise Gone(out["note"])
            return out["entry"]
        entry = self.journal.record(owner, kind, key, prior, new, subsystem=SUBSYSTEM)
        fault_point("dvfs_after_journal_commit")
        try:
            self._set_clamp(key, new)
        except Gone as err:
            self.journal.mark_skipped(entry, f"not written: {err}")
            raise
        except OSError:
            # Refused by the kernel: nothing changed; the entry holds nothing of ours.
            self.journal.mark_restored(entry, "write refused by the kernel")
            raise
        fault_point("dvfs_after_write")
        self.journal.mark_applied(entry)
        return entry

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Restore ``owner``'s values (all owners: ``None``): files by the core, then clamps."""
        report = self.core.restore(owner)
        entries: list[dict[str, Any]] = list(report["entries"])
        summary: dict[str, int] = dict(report["summary"])
        for entry in self.journal.pending_restore(owner=owner, subsystem=SUBSYSTEM):
            if entry.target or entry.kind != "uclamp":
                continue
            outcome, note = self._restore_clamp(entry)
            summary[outcome] = summary.get(outcome, 0) + 1
            entries.append({"id": entry.id, "key": entry.key, "kind": entry.kind,
                            "outcome": outcome, "note": note})
        return {"entries": entries, "summary": summary}

    def _restore_clamp(self, entry: JournalEntry) -> tuple[str, str]:
        try:
            live = self.live(entry.kind, entry.key)
            if live == entry.prior:
                self.journal.mark_restored(entry.id, "already at the prior value")
                return RESTORED, "already at the prior value"
            if live != entry.new:
                note = f"changed by someone else to {live!r}; left alone"
                self.journal.mark_overridden(entry.id, note)
                return OVERRIDDEN, note
            self._set_clamp(entry.key, entry.prior, restoring=True)
        except Gone as err:
            self.journal.mark_skipped(entry.id, str(err))
            return SKIPPED, str(err)
        except OSError as err:
            _LOGGER.warning("dvfs restore of %s failed: %s", entry.key, err)
            return APPLIED, f"restore failed: {err}; kept open"
        self.journal.mark_restored(entry.id)
        return RESTORED, ""

    def overridden(self) -> list[dict[str, Any]]:
        """Applied values someone else changed (marked overridden now)."""
        out = self.core.overridden()
        for entry in self.journal.pending_restore(subsystem=SUBSYSTEM):
            if entry.state != APPLIED or entry.target or entry.kind != "uclamp":
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
