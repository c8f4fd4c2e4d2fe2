"""The journal's write and restore rules, once: for the core actuator and what a plugin keeps.

The core actuator (:mod:`schedcpd.actuator`) writes every value a knob
declaration can express.  A write no declaration can express (creating a
cgroup directory, moving a process between cgroups) stays in its plugin;
the plugin then follows the same rules with these functions (from
:mod:`schedcpd.plugin_api`) rather than a copy of them:

- :func:`journaled_write`: commit the prior value, write, mark applied (a
  target gone is ``skipped``, a refusal leaves nothing of ours: ``restored``);
- :func:`restore_entry`: put the prior value back only where the live value
  is still ours (``restored``; ``overridden`` and left alone when someone
  else changed it; ``skipped`` when the target is gone; kept open when the
  kernel refuses);
- :func:`override_of`: whether an applied value was changed by someone else;
- :func:`merge_reports`: one restore report of several.

The callbacks raise :class:`~schedcpd.actuator.TargetGone` for a target that
is gone and :class:`~schedcpd.actuator.KernelRefused` (or ``OSError``) for a
refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from schedcpd.errors import InvalidArgument, NotFound
from schedcpd.faults import fault_point
from schedcpd.journal import APPLIED, OVERRIDDEN, PENDING, RESTORED, SKIPPED, Journal, JournalEntry

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


def journaled_write(journal: Journal, owner: str, kind: str, key: str, prior: Any, new: Any,
                    write: Callable[[Any], None], subsystem: str, target: str = "") -> int:
    """Journal ``prior``, ``write(new)``, mark applied; the entry id.

    :class:`TargetGone` (entry ``skipped``) and refusals (entry ``restored``:
    nothing of ours is there) are raised after the entry is closed.  Fault
    points ``<subsystem>_after_journal_commit`` and ``<subsystem>_after_write``.
    """
    entry = journal.record(owner, kind, key, prior, new, subsystem=subsystem, target=target)
    fault_point(f"{subsystem}_after_journal_commit")
    try:
        write(new)
    except TargetGone as err:
        journal.mark_skipped(entry, f"not written: {err}")
        raise
    except (KernelRefused, OSError):
        journal.mark_restored(entry, "write refused by the kernel")
        raise
    fault_point(f"{subsystem}_after_write")
    journal.mark_applied(entry)
    return entry


def restore_entry(journal: Journal, entry: JournalEntry, live: Callable[[], Any] | None,
                  put_back: Callable[[Any], None], what: str = "") -> tuple[str, str, bool]:
    """Restore one open entry: (outcome, note, whether the prior value was written).

    ``live()`` reads the value now, ``put_back(prior)`` writes it.  A pending
    entry whose new value was not known yet (``None``) counts as ours.
    ``live=None``: the caller knows the value is ours; it is written back.
    """
    try:
        now = live() if live is not None else entry.new
        if live is not None and now == entry.prior:
            journal.mark_restored(entry.id, "already at the prior value")
            return RESTORED, "already at the prior value", False
        if now != entry.new and not (entry.new is None and entry.state == PENDING):
            note = f"changed by someone else to {now!r}; left alone"
            journal.mark_overridden(entry.id, note)
            return OVERRIDDEN, note, False
        put_back(entry.prior)
    except TargetGone as err:
        journal.mark_skipped(entry.id, str(err))
        return SKIPPED, str(err), False
    except (InvalidArgument, OSError) as err:  # refused, or no longer declared
        _LOGGER.warning("%s restore of %s refused: %s", what or entry.subsystem, entry.key, err)
        return APPLIED, f"restore refused: {err}; kept open", False
    journal.mark_restored(entry.id)
    return RESTORED, "", True


def override_of(journal: Journal, entry: JournalEntry,
                live: Callable[[], Any]) -> dict[str, Any] | None:
    """An applied entry someone else changed, marked overridden (``None``: still ours)."""
    if entry.state != APPLIED:
        return None
    try:
        now = live()
    except (TargetGone, InvalidArgument, OSError):
        return None
    if now == entry.new:
        return None
    journal.mark_overridden(entry.id, f"changed by someone else to {now!r}; no longer managed")
    return {"key": entry.key, "owner": entry.owner, "live": now, "ours": entry.new,
            "state": OVERRIDDEN}


def report_row(entry: JournalEntry, outcome: str, note: str) -> dict[str, Any]:
    """One entry of a restore report."""
    return {"id": entry.id, "key": entry.key, "kind": entry.kind, "outcome": outcome,
            "note": note}


def merge_reports(*reports: dict[str, Any]) -> dict[str, Any]:
    """One restore report (``entries``, ``summary``) of several, in order.

    The summary counts the entries' outcomes (a report's own summary is not read).
    """
    entries = [row for report in reports for row in report["entries"]]
    summary: dict[str, int] = {}
    for row in entries:
        summary[row["outcome"]] = summary.get(row["outcome"], 0) + 1
    return {"entries": entries, "summary": summary}
