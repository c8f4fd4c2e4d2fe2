"""The state and hooks a journaled subsystem plugin has in common (re-exported by plugin_api).

A built-in subsystem plugin (dvfs, io) keeps the same state — its actuator,
the journal it opened itself (if any), its capabilities, the policies it
applied per owner, a lock — and answers some hooks the same way: start-up
binds the journal and the core's actuator and hands older entries over,
``schedcp_shutdown``, ``schedcp_restore`` and ``schedcp_state`` are the
same, an apply is plan -> (write) -> result, the health check looks for
overrides every ``OVERRIDE_CHECK_SECONDS``.  :class:`JournaledPlugin` holds
those once; a subclass names its ``subsystem``, builds its own actuator over
the core's and answers the hooks that are its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from schedcpd.actuator import KnobActuator
from schedcpd.errors import NotSupported
from schedcpd.hookspecs import PluginContext, hookimpl
from schedcpd.journal import Journal, JournalEntry
from schedcpd.knobs import Knob
from schedcpd.payloads import ApplyResult, Capability, RestoreReport, Scope
from schedcpd.plugin_kit import (
    Plan,
    apply_result,
    bind_journal,
    hand_over_legacy,
    journal_state,
    restore_owner,
)

_LOGGER = logging.getLogger(__name__)
OVERRIDE_CHECK_SECONDS = 2.0
"""How often a health check looks for values someone else changed."""


class PluginActuator(Protocol):
    """What a plugin's actuator offers the common hooks."""

    journal: Journal

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Restore ``owner``'s values (all owners: ``None``): a restore report."""

    def overridden(self) -> list[dict[str, Any]]:
        """Values of ours someone else changed (marked overridden now)."""


A = TypeVar("A", bound=PluginActuator)


class JournaledPlugin(Generic[A]):
    """Common state and hooks of a subsystem plugin whose writes the journal holds."""

    subsystem: ClassVar[str] = ""

    def __init__(self) -> None:
        self.actuator: A | None = None
        self.own_journal: Journal | None = None
        self.caps: dict[str, Capability] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._checked = 0.0

    def _act(self) -> A:
        if self.actuator is None:
            raise NotSupported(f"the {self.subsystem} plugin has not started")
        return self.actuator

    def bind(self, context: PluginContext, declare: Callable[[], list[Knob]],
             legacy: Callable[[Journal, JournalEntry], tuple[str, str, Any, Any] | None]
             ) -> tuple[Journal, KnobActuator]:
        """The journal and the core's actuator of ``context``; older entries handed over.

        Started on its own (tests, a crash child), the plugin gets a journal
        of its own and the same core actuator class over ``declare()``.
        """
        journal, self.own_journal = bind_journal(context)
        core = context.actuator or KnobActuator(journal, self.subsystem, declare())
        moved = hand_over_legacy(journal, self.subsystem, legacy)
        if moved:
            _LOGGER.info("%s: %d open entries of an older version handed to the core's "
                         "actuator", self.subsystem, moved)
        return journal, core

    def apply(self, policy: dict[str, Any], scope: Scope, dry_run: bool,
              plan: Callable[[str], Plan], write: Callable[[A, Plan, str], list[Any]],
              what: str, machine_reason: str) -> ApplyResult:
        """``schedcp_apply``: plan for the owner, write unless a dry run, the result."""
        owner = str(scope.get("owner", "manual"))
        with self._lock:
            p = plan(owner)
            skipped = p.skipped
            if not dry_run:
                skipped = write(self._act(), p, owner)
                self.policies[owner] = policy
        n = len(p.writes)
        return apply_result(self.subsystem, owner, dry_run, p, skipped, f"{n} {what}",
                            f"{machine_reason} ({n} value(s))")

    def check_overrides(self) -> None:
        """Mark and log values someone else changed (at most every few seconds; locked)."""
        if time.monotonic() - self._checked > OVERRIDE_CHECK_SECONDS:
            self._checked = time.monotonic()
            for item in self._act().overridden():
                _LOGGER.warning("%s value overridden by someone else: %s", self.subsystem,
                                item)

    @hookimpl
    def schedcp_shutdown(self) -> None:
        """Close our own journal (the host's is the host's)."""
        if self.own_journal is not None:
            self.own_journal.close()
        self.actuator = self.own_journal = None

    @hookimpl
    def schedcp_restore(self, subsystem: str, scope: Scope) -> RestoreReport | None:
        """Put back what ``scope["owner"]`` (or, without one, everything) changed."""
        if subsystem != self.subsystem:
            return None
        return restore_owner(self._act().restore, self._lock, self.policies,
                             scope.get("owner"))

    @hookimpl
    def schedcp_state(self, subsystem: str) -> dict[str, Any] | None:
        """Open journal entries per owner, and values others overrode."""
        if subsystem != self.subsystem:
            return None
        return journal_state(self._act().journal, self.subsystem)
