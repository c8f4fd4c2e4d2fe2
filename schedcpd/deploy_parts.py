"""What a deployment does through the plugins: apply, restore, guards and health of its parts.

A policy is one part (most) or several (:mod:`schedcpd.policy_parts`).
:class:`DeployParts` gives the deployer one apply, one restore, one set of
guards and one health answer for all of them:

- **apply** runs the parts in the document's order, each through its own
  plugin (which journals every prior value before it writes).  When a part
  fails, every part is restored from the journal, newest part first (those
  applied so far, the failing one, which may have written some values
  before it failed, and at a widening the later parts' canary values), and
  :class:`PartFailed` names the part and why;
- **restore** restores every part, newest first (rollback, breaker trip,
  targets gone, error); after a crash the plugins restore everything
  journaled at start-up, so every part comes back there too;
- **guards** are the union of the parts' guards (:class:`UnionGuards`):
  the breaker watches each part's groups with that part's metrics;
- **health** is unhealthy when any part is.

A multi-subsystem policy's groups are named ``<subsystem>/<group>`` here
(targets, roles, trip records), since two parts may name a group alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from schedcpd.breaker import (
    BreakerSettings,
    GroupSample,
    GuardMetrics,
    GuardRoles,
    Guards,
    NoGuards,
    Samples,
    Trip,
)
from schedcpd.errors import Conflict, SchedcpError
from schedcpd.payloads import ApplyResult, Change, Health, RestoreReport, Scope
from schedcpd.plugins import PluginHost
from schedcpd.policy_parts import Part, label, split, subsystems_of
from schedcpd.safety_events import SafetyEvents

_LOGGER = logging.getLogger(__name__)


class PartFailed(SchedcpError):
    """One part of a multi-subsystem policy failed to apply; the applied parts were restored."""

    name = "PartFailed"

    def __init__(self, message: str = "", subsystem: str = "") -> None:
        super().__init__(message)
        self.subsystem = subsystem


class UnionGuards:
    """The guards of several parts as one: groups ``<subsystem>/<group>``.

    ``metrics`` is the first part's; :attr:`group_metrics` names each
    group's own (what the breaker words its trips with).
    """

    def __init__(self, parts: list[tuple[Part, Guards]]) -> None:
        self._parts = parts
        self.metrics: GuardMetrics = parts[0][1].metrics if parts else NoGuards.metrics
        self.group_metrics: dict[str, GuardMetrics] = {
            part.group(g): guards.metrics for part, guards in parts for g in guards.groups}

    @property
    def groups(self) -> dict[str, list[int]]:
        """Every part's groups, qualified."""
        return {part.group(g): pids for part, guards in self._parts
                for g, pids in guards.groups.items()}

    @groups.setter
    def groups(self, groups: dict[str, list[int]]) -> None:
        for part, guards in self._parts:
            guards.groups = _own(part, groups)

    def sample(self) -> dict[str, GroupSample]:
        """Each part's sample, its groups qualified."""
        return {part.group(g): s for part, guards in self._parts
                for g, s in guards.sample().items()}

    def alive(self) -> bool:
        """Whether any part's targets still exist."""
        return any(guards.alive() for _, guards in self._parts)

    def subset(self, groups: dict[str, list[int]]) -> Guards:
        """The parts' guards for a subset of (qualified) groups."""
        return UnionGuards([(part, guards.subset(_own(part, groups)))
                            for part, guards in self._parts])

    def roles(self, baseline: Samples, settings: BreakerSettings) -> GuardRoles:
        """Each part's roles for its groups, from its own share of the baseline."""
        roles: dict[str, str] = {}
        limits: dict[str, float] = {}
        for part, guards in self._parts:
            own = [_own(part, sample) for sample in baseline]
            got = guards.roles(own, settings)
            roles.update({part.group(g): r for g, r in got.roles.items()})
            limits.update({part.group(g): v for g, v in got.limits.items()})
        return GuardRoles(roles, limits)


def _own(part: Part, by_group: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``by_group`` (qualified names) that are ``part``'s, its own names."""
    prefix = part.group("")
    return {g[len(prefix):]: v for g, v in by_group.items() if g.startswith(prefix)}


def group_metrics(guards: Guards) -> dict[str, GuardMetrics]:
    """Per group, the metrics of the part that guards it (empty: all ``guards.metrics``)."""
    return guards.group_metrics if isinstance(guards, UnionGuards) else {}


class DeployParts:
    """One policy's parts, as one deployment sees them."""

    def __init__(self, plugins: PluginHost, subsystem: str, doc: dict[str, Any] | None,
                 events: SafetyEvents | None = None) -> None:
        """``subsystem``: the stored label; ``doc`` may be None where only restores are made."""
        self._plugins = plugins
        self.subsystem = subsystem
        self.events = events
        self.parts = (split(doc, subsystem) if doc is not None else
                      [Part(s, {}, len(subsystems_of(subsystem)) > 1)
                       for s in subsystems_of(subsystem)])
        self.multi = any(p.qualified for p in self.parts)
        self._planned: dict[str, dict[str, list[int]]] = {}
        self.on_applied: Callable[[str], None] = lambda subsystem: None
        """Told each part's subsystem after its (real) apply of a multi-subsystem policy
        (the deployer's crash-test fault point ``after_part_apply``)."""

    def groups(self) -> list[dict[str, Any]]:
        """Every part's group tables (for the engine: only ``match`` is read)."""
        return [g for p in self.parts for g in p.doc.get("group", []) if isinstance(g, dict)]

    # -- apply ------------------------------------------------------------

    def _apply_one(self, part: Part, scope: Scope, dry_run: bool) -> ApplyResult:
        result: ApplyResult | None = self._plugins.call_first(
            "schedcp_apply", subsystem=part.subsystem, policy=part.doc, scope=scope,
            dry_run=dry_run)
        if result is None:
            raise Conflict(f"subsystem {part.subsystem!r} is not available")
        return result

    def apply(self, scope: Scope, dry_run: bool = False) -> ApplyResult:
        """Apply every part for ``scope`` in order (see the module); one merged result."""
        if not self.multi:
            return self._apply_one(self.parts[0], scope, dry_run)
        results: list[tuple[Part, ApplyResult]] = []
        for n, part in enumerate(self.parts, 1):
            try:
                results.append((part, self._apply_one(part, scope, dry_run)))
            except Exception as err:
                where = f"part {part.subsystem!r} ({n} of {len(self.parts)})"
                if dry_run:
                    raise PartFailed(f"{where} cannot be applied: {err}",
                                     part.subsystem) from err
                # Every part, not only those before this one: at a widening
                # the later parts hold the canary's values (restoring a part
                # that wrote nothing for this owner restores nothing).
                owner = scope.get("owner")
                _LOGGER.warning("deployment %s: %s failed (%s); restoring %s", owner, where,
                                err, ", ".join(p.subsystem for p in self.parts))
                restored = self._restore_parts(self.parts, owner)
                undone = ", ".join(f"{s} ({_count(r)} value(s))" for s, r in restored)
                raise PartFailed(f"{where} failed to apply: {type(err).__name__}: {err}; "
                                 f"restored every part: {undone}",
                                 part.subsystem) from err
            if dry_run:
                self._planned[part.subsystem] = results[-1][1].get("targets", {})
            else:
                self.on_applied(part.subsystem)
        return _merge(self.subsystem, results)

    # -- restore ----------------------------------------------------------

    def _restore_parts(self, parts: list[Part],
                       owner: str | None) -> list[tuple[str, RestoreReport | None]]:
        out = []
        scope: Scope = {} if owner is None else {"owner": owner}
        for part in reversed(parts):
            try:
                out.append((part.subsystem, self._plugins.call_first(
                    "schedcp_restore", subsystem=part.subsystem, scope=scope)))
            except SchedcpError as err:  # the other parts are still restored
                _LOGGER.error("restore of %s's part %s failed: %s", owner, part.subsystem,
                              err)
                out.append((part.subsystem, {"entries": [], "summary": {"error": 1}}))
        return out

    def restore(self, dep_id: str, cause: str) -> RestoreReport | None:
        """Restore what ``dep_id`` changed in every part; report the rollback's time."""
        start = time.monotonic()
        reports = self._restore_parts(self.parts, dep_id)
        if self.events is not None:
            self.events.rolled_back(self.subsystem, cause, time.monotonic() - start)
        if not self.multi:
            return reports[0][1]
        summary: dict[str, int] = {}
        entries: list[dict[str, Any]] = []
        for subsystem, report in reports:
            for k, v in (report or {}).get("summary", {}).items():
                summary[k] = summary.get(k, 0) + int(v)
            entries += [{**e, "subsystem": subsystem} for e in (report or {}).get("entries", [])]
        return {"entries": entries, "summary": summary}

    # -- guards and health ----------------------------------------------------

    def guards(self, targets: dict[str, list[int]]) -> Guards:
        """The parts' guards for ``targets`` (none: only the parts' health can trip)."""
        found = []
        for part in self.parts:
            guards = self._plugins.call_first("schedcp_guards", subsystem=part.subsystem,
                                              policy=part.doc, targets=_own(part, targets))
            if not self.multi:
                return NoGuards() if guards is None else guards
            if guards is not None:
                found.append((part, guards))
        return UnionGuards(found) if found else NoGuards()

    def health(self, dep_id: str) -> tuple[Trip | None, dict[str, list[int]] | None]:
        """(a trip when a part reports the deployment broken, the targets now)."""
        targets: dict[str, list[int]] = {}
        answered = False
        for part in self.parts:
            health: Health | None = self._plugins.call_first(
                "schedcp_health", subsystem=part.subsystem, scope={"owner": dep_id})
            now = None
            if health and not health.get("healthy", True):
                return Trip(str(health.get("guard", "health")), part.subsystem,
                            float(health.get("baseline", 1.0)),
                            float(health.get("observed", 0.0)),
                            str(health.get("detail", "the subsystem reports the deployment "
                                           "broken"))), None
            if health and isinstance(health.get("targets"), dict):
                now, answered = health["targets"], True
            if now is None:  # this part does not follow its targets: keep the planned
                now = self._planned.get(part.subsystem, {})
            targets.update({part.group(g): list(p) for g, p in now.items()})
        return None, targets if answered else None

    def state(self) -> list[dict[str, Any]]:
        """Each part's ``schedcp_state`` (what it manages, values overridden)."""
        out = []
        for part in self.parts:
            state = self._plugins.call_first("schedcp_state", subsystem=part.subsystem)
            if isinstance(state, dict):
                out.append(state)
        return out


def _count(report: RestoreReport | None) -> int:
    return len((report or {}).get("entries", []))


def _merge(subsystem: str, results: list[tuple[Part, ApplyResult]]) -> ApplyResult:
    """The parts' apply results as one (per part under ``parts``)."""
    targets: dict[str, list[int]] = {}
    changes: list[Change] = []
    problems: list[Any] = []
    for part, result in results:
        targets.update({part.group(g): pids for g, pids in result.get("targets", {}).items()})
        for change in result.get("changes", []):
            named = change.copy()
            named["target"] = f"{part.subsystem}: {change.get('target', '')}"
            changes.append(named)
        problems += result.get("problems", [])
    machine = all(r.get("scope") == "machine" for _, r in results)
    notes = "; ".join(f"{p.subsystem}: {r.get('reason') or r.get('note') or 'applied'}"
                      for p, r in results)
    merged: ApplyResult = {
        "subsystem": subsystem, "targets": targets, "changes": changes, "problems": problems,
        "scope": "machine" if machine else "processes", "canary": "machine",
        "note": notes, "summary": {"parts": len(results), "changes": len(changes)}}
    merged["parts"] = {p.subsystem: r for p, r in results}  # type: ignore[typeddict-unknown-key]
    if machine:
        merged["reason"] = f"applied machine-wide, every part ({notes})"
    elif any(r.get("scope") == "machine" for _, r in results):
        merged["reason"] = f"applied to the canary, machine-wide parts whole ({notes})"
    return merged


__all__ = ["DeployParts", "PartFailed", "UnionGuards", "group_metrics", "label"]
