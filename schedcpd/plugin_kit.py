"""Scaffolding shared by journaled subsystem plugins (re-exported by plugin_api).

A plugin that plans writes of kernel values, makes them through a journal and
puts them back per owner repeats the same parts around its own logic: the
planned writes and the plan, the ``changes`` and the result dict of an apply,
the per-owner restore, the journal state and the journaled keys of a process.
They are here once, with no subsystem's knobs or field names in them; the
plugin supplies what is its own (the plan's contents, the actuator's restore,
the wording of its notes).  docs/plugins.md describes them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedcpd.analysis import procfs
from schedcpd.hookspecs import PluginContext
from schedcpd.journal import OVERRIDDEN, Journal, JournalEntry
from schedcpd.knobs import KnobChange
from schedcpd.payloads import ApplyResult, Change, RestoreReport
from schedcpd.restore_rule import KernelRefused, TargetGone

EXPLAIN_STATES = ("pending", "applied", "restored", "skipped", "overridden")
"""Journal states of an entry that ``schedcp_explain_keys`` reports."""


@dataclass
class Write:
    """One planned write."""

    kind: str
    key: str
    prior: Any
    new: Any
    target: str
    knob: str


@dataclass
class Plan:
    """What an apply would do."""

    writes: list[Write] = field(default_factory=list)
    targets: dict[str, list[int]] = field(default_factory=dict)
    machine: bool = False
    skipped: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GroupMatch:
    """A policy group's ``match``: process names and/or pids, and all their descendants."""

    comm: list[str]
    pids: list[int]

    def scan(self) -> list[int]:
        """Matched processes and their descendants, sorted."""
        return procfs.process_tree(self.comm, self.pids)


def changes(p: Plan, status: str) -> list[Change]:
    """The plan as the ``changes`` of an apply result."""
    return [{"target": w.target, "knob": w.knob, "before": w.prior, "after": w.new,
             "status": status} for w in p.writes]


def policy_body(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy without the host's ``_source`` annotation (what a plugin validates)."""
    return {k: v for k, v in policy.items() if k != "_source"}


def bind_journal(context: PluginContext) -> tuple[Journal, Journal | None]:
    """The host's journal, or (started on its own) one of our own under the state dir.

    Returns ``(journal, own)``: ``own`` is the journal the plugin opened and must
    close at shutdown, ``None`` when the host's is used.
    """
    if context.journal is not None:
        return context.journal, None
    own = Journal(Path(context.state_dir) / "journal.db")
    return own, own


def apply_result(subsystem: str, owner: str, dry_run: bool, p: Plan,
                 skipped: list[dict[str, Any]], note: str, machine_reason: str) -> ApplyResult:
    """The result of ``schedcp_apply`` for plan ``p``.

    ``skipped`` is what was not written (the plan's own, or the apply's);
    ``machine_reason`` is set as ``reason`` when a real apply was machine-wide.
    """
    result: ApplyResult = {
        "subsystem": subsystem, "owner": owner, "dry_run": dry_run,
        "targets": p.targets, "changes": changes(p, "planned" if dry_run else "applied"),
        "problems": skipped, "summary": {"writes": len(p.writes), "skipped": len(skipped)},
        "scope": "machine" if p.machine else "processes", "canary": "machine",
        "note": note}
    if not dry_run and p.machine:
        result["reason"] = machine_reason
    return result


def restore_owner(restore: Callable[[str | None], dict[str, Any]], lock: threading.Lock,
                  policies: dict[str, dict[str, Any]], owner: str | None) -> RestoreReport:
    """Restore ``owner``'s values (all owners: ``None``) and forget its policies."""
    with lock:
        report = restore(owner)
        if owner is None:
            policies.clear()
        else:
            policies.pop(owner, None)
    return {"entries": report["entries"], "summary": report["summary"]}


def hand_over_legacy(journal: Journal, subsystem: str,
                     convert: Callable[[Journal, JournalEntry],
                                       tuple[str, str, Any, Any] | None]
                     ) -> int:
    """Give the core actuator the open entries an older plugin wrote itself.

    ``convert(journal, entry)`` answers ``(knob, target, prior, new)`` for an entry
    without a target that the plugin now writes through the core (``None``:
    not one of those).  Run at start-up, before the daemon's restore, so a
    daemon upgraded with open entries still restores them.  Returns how many.
    """
    count = 0
    for entry in journal.pending_restore(subsystem=subsystem):
        if entry.target:
            continue
        moved = convert(journal, entry)
        if moved is not None:
            journal.retarget(entry.id, *moved)
            count += 1
    return count


def follow_inherited(core: Any, journal: Journal, owner: str, subsystem: str, knob: str,
                     pids: Iterable[int]) -> list[int]:
    """Have the core adopt the per-thread values new threads of ``pids`` inherited.

    A thread forked from a task we set ``knob`` on (a syscall knob: clamps,
    I/O priority) holds our value without a journal entry; one whose live
    value (read by the core) is the ``new`` of an entry of ``owner``'s is
    adopted with that entry's prior, under key ``<knob>:<tid>:<start>``.
    Threads with an entry already are left out.  Returns the new entry ids.
    """
    ours = [e for e in journal.entries(owner=owner, subsystem=subsystem)
            if e.kind == knob and e.target]
    if not ours:
        return []
    known = {e.target.split(":")[0] for e in ours}
    found = []
    for pid in pids:
        for tid in procfs.thread_ids(pid):
            start = procfs.task_start_time(tid)
            if str(tid) in known or start is None:
                continue
            try:
                live = core.read(knob, f"{tid}:{start}")
            except (TargetGone, KernelRefused):
                continue
            match = [e for e in ours if e.new == live]
            if match:
                found.append(KnobChange(knob, f"{tid}:{start}", live, f"{knob}:{tid}:{start}",
                                        {"prior": match[-1].prior}))
    return list(core.adopt(owner, found)) if found else []


def journal_state(journal: Journal, subsystem: str) -> dict[str, Any]:
    """Open journal entries per owner, and values others overrode (``schedcp_state``)."""
    managed: dict[str, int] = {}
    for e in journal.pending_restore(subsystem=subsystem):
        managed[e.owner] = managed.get(e.owner, 0) + 1
    return {"managed": managed, "overridden": [
        e.as_dict() for e in journal.entries(state=OVERRIDDEN, subsystem=subsystem,
                                             limit=100)]}


def thread_keys(prefix: str, pid: int) -> list[str]:
    """Keys ``<prefix>:<tid>:<start time>`` of ``pid``'s live threads (per-thread knobs)."""
    keys = []
    for tid in procfs.thread_ids(pid):
        start = procfs.task_start_time(tid)
        if start is not None:
            keys.append(f"{prefix}:{tid}:{start}")
    return keys


def journaled_keys(journal: Journal, keys: Iterable[str], subsystem: str) -> list[str]:
    """Those of ``keys`` the journal has an entry for (``schedcp_explain_keys``)."""
    return [k for k in keys if journal.for_key(k, EXPLAIN_STATES, subsystem=subsystem)]
