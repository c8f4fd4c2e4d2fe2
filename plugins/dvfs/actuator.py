"""The dvfs plugin's writes, as change sets for the core's actuator.

Every value the plugin changes is a declared knob (:mod:`plugins.dvfs.knobs`):
cpufreq, boost and cgroup clamp files, and task clamps (the ``uclamp`` knob,
the core's ``sched_setattr.uclamp`` syscall).  Each planned write is turned
into a :class:`~schedcpd.plugin_api.KnobChange` and handed to the core's
:class:`~schedcpd.plugin_api.KnobActuator`, which checks it against the
declarations, journals the prior value, writes, restores exactly (override
detection included).  The plugin writes no kernel value itself, and has no
restore logic of its own: :meth:`Actuator.restore` and
:meth:`Actuator.overridden` are the core's.

Journal keys: ``cpufreq:<policyN>:<file>`` (kind ``cpufreq.<file>``),
``boost:cpufreq`` or ``boost:intel_pstate`` (kind ``boost``),
``cg_uclamp:<path>:<file>`` (kind ``cg_uclamp``; path relative to the cgroup
v2 root), all with the written file's real path as ``target``; and
``uclamp:<tid>:<start>`` (kind ``uclamp``; ``[min, max]``, target
``<tid>:<start>``).  Entries an older version wrote itself (task clamps
without a target) are handed to the core at start-up (:func:`legacy`).

Fault injection for the crash tests: ``SCHEDCP_FAULT=dvfs_after_journal_commit``
(or ``dvfs_after_write``, optionally ``:N``) SIGKILLs the process there (in
the core's actuator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugins.dvfs import cpufreq, uclamp
from plugins.dvfs.knobs import BOOST, CG_UCLAMP, KIND_OF_FILE, UCLAMP
from schedcpd.plugin_api import (
    SKIPPED,
    Journal,
    JournalEntry,
    KnobActuator,
    KnobChange,
)

SUBSYSTEM = "dvfs"


class Gone(Exception):
    """The target of a write is gone (policy removed, task exited, cgroup removed)."""


def task_target(key: str) -> str:
    """The core's target (``<tid>:<start>``) of a ``uclamp:<tid>:<start>`` key."""
    _, tid, start = key.split(":")
    return f"{int(tid)}:{int(start)}"


def legacy(journal: Journal, entry: JournalEntry) -> tuple[str, str, Any, Any] | None:
    """An open task clamp entry an older version wrote itself, as the core's knob."""
    if entry.kind != UCLAMP:
        return None
    return UCLAMP, task_target(entry.key), entry.prior, entry.new


class Actuator:
    """The dvfs plugin's view of its writes: planned writes become the core's changes."""

    def __init__(self, journal: Journal, freq: cpufreq.CpuFreq,
                 cgroup_root: Path | None, core: KnobActuator) -> None:
        self.journal = journal
        self.freq = freq
        self.cgroup_root = cgroup_root
        self.core = core
        self.restore = core.restore
        self.overridden = core.overridden

    def _cg_file(self, key: str) -> Path:
        _, rel, name = key.split(":", 2)
        if self.cgroup_root is None or name not in uclamp.CGROUP_FILES:
            raise Gone(f"no cgroup v2 hierarchy for {key}")
        path = uclamp.cgroup_path(self.cgroup_root, rel)
        if not path.is_dir():
            raise Gone(f"cgroup {rel} was removed")
        return path / name

    def change(self, kind: str, key: str, value: Any) -> KnobChange:
        """The change (declared knob, target, value) behind a planned write."""
        if kind == "cpufreq":
            _, pol, name = key.split(":", 2)
            if name not in KIND_OF_FILE:
                raise ValueError(f"{name} is not a file the dvfs plugin writes")
            return KnobChange(KIND_OF_FILE[name], str(self.freq.path(pol, name)), value, key)
        if kind == "boost":
            return KnobChange(BOOST, str(self.freq.boost_file(key)), value, key)
        if kind == "cg_uclamp":
            return KnobChange(CG_UCLAMP, str(self._cg_file(key)), value, key)
        if kind == UCLAMP:
            return KnobChange(UCLAMP, task_target(key), value, key)
        raise ValueError(f"unknown dvfs write kind {kind!r}")

    def write(self, owner: str, kind: str, key: str, new: Any) -> int | None:
        """Write one planned value through the core; the journal entry id (``None``: unchanged).

        :class:`Gone` when the target is gone (entry skipped); ``KernelRefused``
        when the kernel refuses.
        """
        (out,) = self.core.apply(owner, [self.change(kind, key, new)])
        if out["status"] == SKIPPED:
            raise Gone(out["note"])
        return out["entry"]
