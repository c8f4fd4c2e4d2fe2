"""Applying a compiled T1 policy to its targets, now and as new tasks appear.

:class:`Applier` keeps one :class:`Registration` per owner (deployment or
policy id).  ``apply`` writes the policy to every matching task through the
:class:`~plugins.scheduler.actuator.Actuator` (journal first); the task
watcher then calls ``on_new`` for each fork/exec so new matching tasks get
the policy too.  Descendants of a targeted task are targeted as well (the
kernel makes them inherit policy, nice, slice and cgroup anyway; journaling
them with the parent's prior is what makes restore exact for them).

Write order per task: cgroup membership, nice, slice, timer slack, autogroup
nice, affinity, and the scheduling policy last (the kernel ignores a slice
or nice written with ``sched_setattr`` to a SCHED_IDLE task).  Restore runs
newest first, i.e. in the reverse order.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from plugins.scheduler import cgroups, descendants, policy, targets, tasks
from plugins.scheduler.actuator import (
    KIND_DEBUGFS,
    KIND_DIR,
    KIND_MEMBERSHIP,
    KIND_SYSCTL,
    KIND_TASK,
    KIND_VALUE,
    SUBSYSTEM,
    Actuator,
    Change,
    Gone,
    Inherited,
    task_key,
)
from plugins.scheduler.cgroups import Hierarchy
from plugins.scheduler.unit_groups import KIND_UNIT, UnitGroups, UnitPlan, unit_key
from schedcpd.plugin_api import Conflict, InvalidArgument, NotSupported

_LOGGER = logging.getLogger(__name__)

TASK_ORDER = ("nice", "slice_ns", "timer_slack_ns", "autogroup_nice", "affinity", "policy")


@dataclass
class Registration:
    """An applied policy that keeps acting on new tasks until restored."""

    owner: str
    policy: policy.Policy
    scope_pids: list[int] | None
    applied_at: float
    targets: dict[str, set[int]] = field(default_factory=dict)
    new_tasks: int = 0


@dataclass
class Child:
    """A forked task of a managed one, journaled once ``due`` passes (if still alive)."""

    owner: str
    group: str
    tgid: int
    start: int
    priors: dict[str, Any]
    due: float


class Applier:
    """Applies policies for owners; thread-safe (shares the actuator's lock).

    ``inherit_delay``: seconds a forked child of a managed task waits before
    its inherited values are journaled (see :meth:`tick`).
    """

    def __init__(
        self,
        actuator: Actuator,
        hierarchies: dict[str, Hierarchy],
        cgroup_parent: str,
        inherit_delay: float = 0.1,
        unit_groups: UnitGroups | None = None,
    ) -> None:
        self.actuator = actuator
        self.hierarchies = hierarchies
        self.cgroup_parent = cgroup_parent
        # On a systemd host: cgroup knobs become properties of the targets'
        # units, and the plugin creates no cgroup and moves no process.
        self.unit_groups = unit_groups
        self.inherit_delay = inherit_delay
        self.registrations: dict[str, Registration] = {}
        # tid -> (owner, group name) for tasks we changed; lets forks inherit.
        self.managed: dict[int, tuple[str, str]] = {}
        # Forked children not journaled yet (insertion order is due order),
        # and managed tasks that exited (entries closed on the next tick).
        self.children: dict[int, Child] = {}
        self.exited: list[int] = []
        self.lock: threading.RLock = actuator.lock

    # -- whole policy -----------------------------------------------------

    def apply(self, doc: dict[str, Any], scope: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        """Validate, compile and apply ``doc`` within ``scope``; return the changes."""
        findings = [f for f in policy.validate(doc, "<policy>") if f["severity"] == "error"]
        if findings:
            raise InvalidArgument("; ".join(f["message"] for f in findings))
        compiled = policy.compile_policy(doc)
        owner = str(scope.get("owner") or "")
        if not owner and not dry_run:
            raise InvalidArgument("scope.owner is required to apply a policy")
        owner = owner or "dry-run"
        scope_pids = [int(p) for p in scope["pids"]] if "pids" in scope else None
        self._check_kernel(compiled)
        changes: list[Change] = []
        with self.lock:
            if not dry_run and owner in self.registrations:
                other = self.registrations[owner].policy.name
                if other != compiled.name:
                    raise Conflict(f"owner {owner} already applies policy {other}")
            reg = Registration(owner, compiled, scope_pids, time.time())
            found: dict[str, list[int]] = {}
            claimed: set[int] = set()
            for group in compiled.groups:
                pids = [p for p in targets.scan(group.selector, scope_pids) if p not in claimed]
                claimed.update(pids)
                found[group.name] = pids
            # Refuses a group whose unit holds other processes before anything is written.
            plans = self._plan_units(compiled, found, scope_pids)
            for group in compiled.groups:
                self._ensure_cgroup(reg, group, changes, dry_run)
            for plan in plans:
                changes.extend(self._set_unit(owner, plan, dry_run))
            for group in compiled.groups:
                pids = found[group.name]
                reg.targets[group.name] = set(pids)
                for pid in pids:
                    for tid in tasks.threads(pid):
                        self._apply_task(reg, group, tid, pid, changes, dry_run)
            for name, value in compiled.sysctl.items():
                changes.append(
                    self.actuator.set(
                        owner, KIND_SYSCTL, f"sysctl:{name}", str(value), dry_run=dry_run
                    )
                )
            for name, value in compiled.debugfs.items():
                changes.append(
                    self.actuator.set(
                        owner, KIND_DEBUGFS, f"debugfs:{name}", str(value), dry_run=dry_run
                    )
                )
            if not dry_run:
                previous = self.registrations.get(owner)
                if previous is not None:
                    for name, old in previous.targets.items():
                        reg.targets.setdefault(name, set()).update(old)
                self.registrations[owner] = reg
        return self._report(owner, compiled.name, changes, dry_run, reg)

    def _check_kernel(self, compiled: policy.Policy) -> None:
        for group in compiled.groups:
            for knob in group.cgroup:
                controller = cgroups.KNOB_CONTROLLER[knob]
                if controller not in self.hierarchies:
                    raise NotSupported(
                        f"group {group.name}: cgroup.{knob} needs the {controller} controller,"
                        " which is not mounted (v1) or enabled (v2) here"
                    )
            if str(group.task.get("policy", "")).split(":")[0] in tasks.RT_POLICIES:
                from plugins.scheduler import sysctl

                if sysctl.read_sysctl("sched_rt_runtime_us") == "-1":
                    raise Conflict(
                        "refusing fifo/rr: the RT throttle is off (sched_rt_runtime_us=-1)"
                    )

    def _report(
        self, owner: str, name: str, changes: list[Change], dry_run: bool, reg: Registration
    ) -> dict[str, Any]:
        by_status: dict[str, list[dict[str, Any]]] = {}
        for change in changes:
            by_status.setdefault(change.status, []).append(change.as_dict())
        return {
            "subsystem": SUBSYSTEM,
            "owner": owner,
            "policy": name,
            "dry_run": dry_run,
            "targets": {group: sorted(pids) for group, pids in reg.targets.items()},
            "changes": [c.as_dict() for c in changes if c.status in ("changed", "dry-run")],
            "summary": {status: len(items) for status, items in by_status.items()},
            "problems": [
                c.as_dict()
                for c in changes
                if c.status in ("conflict", "overridden", "error", "gone")
            ],
        }

    # -- cgroups ----------------------------------------------------------

    def group_path(self, owner: str, group: policy.Group) -> str:
        """Relative cgroup path the plugin uses for ``owner``'s ``group``."""
        return cgroups.group_relative(self.cgroup_parent, owner, group.name)

    def _controllers(self, group: policy.Group) -> list[str]:
        """Controllers of the plugin's own cgroups for ``group`` (none on a systemd host)."""
        if self.unit_groups is not None:
            return []
        return sorted({cgroups.KNOB_CONTROLLER[k] for k in group.cgroup})

    def _plan_units(self, compiled: policy.Policy, found: dict[str, list[int]],
                    scope_pids: list[int] | None) -> list[UnitPlan]:
        if self.unit_groups is None:
            return []
        plans: list[UnitPlan] = []
        for group in compiled.groups:
            if group.cgroup and found[group.name]:
                matched = set(targets.scan(group.selector)) | set(found[group.name])
                plans += self.unit_groups.plan(group, found[group.name], matched)
        return plans

    def _set_unit(self, owner: str, plan: UnitPlan, dry_run: bool) -> list[Change]:
        return [self.actuator.set(owner, KIND_UNIT, unit_key(plan.unit, prop), value,
                                  dry_run=dry_run)
                for prop, value in plan.properties.items()]

    def _new_in_unit(self, reg: Registration, group: policy.Group, tgid: int) -> None:
        """A process that starts matching later: its unit gets the group's properties too."""
        if self.unit_groups is None or not group.cgroup:
            return
        matched = reg.targets.get(group.name, set()) | {tgid}
        try:
            for plan in self.unit_groups.plan(group, [tgid], matched):
                self._warn(self._set_unit(reg.owner, plan, False))
        except NotSupported as exc:
            _LOGGER.warning("new target %s of %s: cgroup knobs not applied: %s",
                            tgid, reg.owner, exc)

    def _ensure_cgroup(
        self, reg: Registration, group: policy.Group, changes: list[Change], dry_run: bool
    ) -> None:
        rel = self.group_path(reg.owner, group)
        for controller in self._controllers(group):
            hierarchy = self.hierarchies[controller]
            if hierarchy.version == 2:
                # v2: a child has cpu.* / cpuset.* files only when every
                # ancestor passes the controller on (cgroup.subtree_control).
                parents = ["/"] + ([f"/{self.cgroup_parent}"] if self.cgroup_parent else [])
                for parent in parents:
                    change = self.actuator.enable_controller(reg.owner, controller, parent,
                                                             dry_run=dry_run)
                    changes.append(change)
                    if change.status in ("error", "gone"):
                        # Without it no cpu.*/cpuset.* file exists: say so, write nothing more.
                        raise NotSupported(f"group {group.name}: cannot enable the {controller} "
                                           f"controller below {parent}: {change.note}")
            changes.append(
                self.actuator.set(
                    reg.owner,
                    KIND_DIR,
                    f"cgroup_dir:{controller}:{rel}",
                    "present",
                    dry_run=dry_run,
                )
            )
            for file, text in self._cgroup_values(hierarchy, group):
                changes.append(
                    self.actuator.set(
                        reg.owner,
                        KIND_VALUE,
                        f"cgroup_value:{controller}:{rel}:{file}",
                        text,
                        dry_run=dry_run,
                    )
                )

    @staticmethod
    def _cgroup_values(hierarchy: Hierarchy, group: policy.Group) -> list[tuple[str, str]]:
        values: list[tuple[str, str]] = []
        knobs = {
            k: v
            for k, v in group.cgroup.items()
            if cgroups.KNOB_CONTROLLER[k] == hierarchy.controller
        }
        if hierarchy.version == 2 and ("quota_us" in knobs or "period_us" in knobs):
            quota = int(knobs.pop("quota_us", -1))
            period = int(knobs.pop("period_us", 100_000))
            values.append(("cpu.max", cgroups.cpu_max_value(quota, period)))
        # Period before quota: a quota is checked against the current period.
        for knob in sorted(knobs, key=lambda k: (k != "period_us", k)):
            text = cgroups.knob_value(hierarchy, knob, knobs[knob], 0)
            values.append((hierarchy.knob_file(knob), text))
        return values

    # -- one task ---------------------------------------------------------

    def _inherited(self, owner: str, parent: int) -> dict[str, Any]:
        """Original priors of ``parent``'s managed knobs (oldest open entry per knob)."""
        priors: dict[str, Any] = {}
        for entry in self.actuator.journal.for_key_prefix(f"task:{parent}:", subsystem=SUBSYSTEM):
            if entry.owner == owner:
                priors[entry.key.rsplit(":", 1)[1]] = entry.prior  # oldest wins (newest first)
        return priors

    def _apply_task(
        self,
        reg: Registration,
        group: policy.Group,
        tid: int,
        tgid: int,
        changes: list[Change],
        dry_run: bool,
        child: Child | None = None,
    ) -> list[Inherited]:
        """Apply ``group``'s task values to ``tid``.

        For a forked ``child`` of a managed task, return the knobs it
        inherited, with the parent's priors: the caller journals them (all
        children's in one commit, :meth:`Actuator.inherit`).
        """
        start = tasks.start_time(tid) if child is None else child.start
        if start is None:
            return []
        inherited = child.priors if child is not None else {}
        inherit: list[Inherited] = []
        rel = self.group_path(reg.owner, group)
        for controller in self._controllers(group):
            hierarchy = self.hierarchies[controller]
            knob = f"cgroup.{controller}"
            key = task_key(tid, start, knob)
            if knob in inherited:
                inherit.append((reg.owner, KIND_MEMBERSHIP, key, {"path": rel}, inherited[knob]))
                continue
            try:
                current = cgroups.task_cgroup(tid, hierarchy)
                affinity = sorted(tasks.read_knob(tid, "affinity"))
            except (tasks.TaskGone, OSError):
                return []
            if current == rel:
                continue  # already there (re-apply)
            prior = {"path": current, "affinity": affinity if controller == "cpuset" else None}
            changes.append(
                self.actuator.set(
                    reg.owner, KIND_MEMBERSHIP, key, {"path": rel}, prior=prior, dry_run=dry_run
                )
            )
        for knob in TASK_ORDER:
            if knob not in group.task or (knob == "autogroup_nice" and tid != tgid):
                continue
            key = task_key(tid, start, knob)
            value = group.task[knob]
            if knob in inherited:
                inherit.append((reg.owner, KIND_TASK, key, value, inherited[knob]))
            else:
                changes.append(self.actuator.set(reg.owner, KIND_TASK, key, value, dry_run=dry_run))
        if not dry_run:
            self.managed[tid] = (reg.owner, group.name)
        return inherit

    # -- watcher callbacks ------------------------------------------------

    def on_new(self, tid: int, tgid: int, parent: int | None, event: str) -> None:
        """A task forked, exec'd or renamed: apply the policy that targets it."""
        if not self.registrations:
            return
        with self.lock:
            if tid in self.managed:
                return
            if event == "fork" and parent is not None and parent in self.managed:
                owner, name = self.managed[parent]
                reg = self.registrations.get(owner)
                group = self._group(reg, name)
                if reg is None or group is None:
                    return
                if group.descendants or tid != tgid:
                    self._adopt(reg, group, tid, tgid, parent)
                else:
                    self._undo_inheritance(reg.owner, tid, parent)
                return
            if tid != tgid:
                return
            info = targets.process_info(tgid)
            if info is None:
                return
            for reg in self.registrations.values():
                if reg.scope_pids is not None:
                    continue  # a canary scope covers its pids and their descendants only
                for group in reg.policy.groups:
                    if group.selector.matches(info):
                        self._new_in_unit(reg, group, tgid)
                        for thread in tasks.threads(tgid):
                            self._apply_new(reg, group, thread, tgid)
                        return

    def _apply_new(self, reg: Registration, group: policy.Group, tid: int, tgid: int) -> None:
        changes: list[Change] = []
        self._apply_task(reg, group, tid, tgid, changes, False)
        self._count_new(reg, group, tid, tgid)
        self._warn(changes)

    @staticmethod
    def _count_new(reg: Registration, group: policy.Group, tid: int, tgid: int) -> None:
        if tid == tgid:
            reg.targets.setdefault(group.name, set()).add(tgid)
        reg.new_tasks += 1

    @staticmethod
    def _warn(changes: list[Change]) -> None:
        bad = [c for c in changes if c.status in ("error", "conflict", "overridden")]
        if bad:
            _LOGGER.warning("new tasks: %s", [c.as_dict() for c in bad])

    def _priors(self, owner: str, parent: int) -> dict[str, Any]:
        """What ``parent``'s managed knobs held before the policy (its child inherits them)."""
        pending = self.children.get(parent)
        return dict(pending.priors) if pending is not None else self._inherited(owner, parent)

    def _adopt(
        self, reg: Registration, group: policy.Group, tid: int, tgid: int, parent: int
    ) -> None:
        """Follow a forked child: managed now, journaled by :meth:`tick` if it lives long enough.

        Most children of a build live for milliseconds; journaling each one
        at fork (read, commit, close on exit) cost a 2-core build ~15 % of
        its makespan.  The kernel already gave the child our values, and a
        child that exits within ``inherit_delay`` never needs restoring.
        """
        start = tasks.start_time(tid)
        if start is None:
            return  # gone already
        self.children[tid] = Child(reg.owner, group.name, tgid, start,
                                   self._priors(reg.owner, parent),
                                   time.monotonic() + self.inherit_delay)
        self.managed[tid] = (reg.owner, group.name)
        self._count_new(reg, group, tid, tgid)

    def tick(self, owner: str | None = None, *, now: float | None = None) -> float | None:
        """Journal children whose delay passed; close entries of exited tasks.

        With ``owner`` (a restore), that owner's children are journaled at
        once.  Returns the seconds until the next child is due (None: none
        waits).  The watcher thread calls this between events.
        """
        with self.lock:
            if not self.children and not self.exited:
                return None
            now = time.monotonic() if now is None else now
            due: list[int] = []
            for tid, child in self.children.items():  # in due order
                if child.due <= now or (owner is not None and child.owner == owner):
                    due.append(tid)
                elif owner is None:
                    break
            inherit: list[Inherited] = []
            changes: list[Change] = []
            for tid in due:
                child = self.children.pop(tid)
                reg = self.registrations.get(child.owner)
                group = self._group(reg, child.group)
                if reg is None or group is None or not tasks.is_alive(tid, child.start):
                    continue
                inherit += self._apply_task(reg, group, tid, child.tgid, changes, False, child)
            if inherit:
                changes.extend(self.actuator.inherit(inherit))
            if self.exited:
                self.actuator.forget_tasks(self.exited)
                self.exited = []
            waiting = next(iter(self.children.values()), None)
        self._warn(changes)
        return None if waiting is None else max(0.0, waiting.due - now)

    def _undo_inheritance(self, owner: str, tid: int, parent: int) -> None:
        """Give an untargeted child the values its parent had before the policy.

        The kernel copied our values into the child at fork; writing the
        parent's journaled priors undoes exactly that, and nothing of the
        child needs restoring later.
        """
        start = tasks.start_time(tid)
        if start is None:
            return
        for knob, prior in self._priors(owner, parent).items():
            kind = KIND_MEMBERSHIP if knob.startswith("cgroup.") else KIND_TASK
            if knob == "autogroup_nice":
                continue  # shared with the parent's session: not the child's to undo
            try:
                self.actuator.write(kind, task_key(tid, start, knob), prior)
            except (Gone, OSError, ValueError) as exc:
                _LOGGER.warning("child %s of %s keeps inherited %s: %s", tid, parent, knob, exc)

    @staticmethod
    def _group(reg: Registration | None, name: str) -> policy.Group | None:
        if reg is None:
            return None
        return next((g for g in reg.policy.groups if g.name == name), None)

    def targets(self, owner: str) -> dict[str, list[int]] | None:
        """The processes ``owner``'s policy covers now, per group (None: not applied).

        Selector groups gain the matching processes that start later, and
        every group loses the ones that exit.
        """
        with self.lock:
            reg = self.registrations.get(owner)
            if reg is None:
                return None
            return {group: sorted(pids) for group, pids in reg.targets.items()}

    def on_exit(self, tid: int) -> None:
        """A task exited: forget it; its journal entries are closed on the next tick."""
        with self.lock:
            if self.managed.pop(tid, None) is None:
                return
            for reg in self.registrations.values():
                for pids in reg.targets.values():
                    pids.discard(tid)
            if self.children.pop(tid, None) is None:
                self.exited.append(tid)

    # -- restore ----------------------------------------------------------

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Stop applying for ``owner`` (or everyone) and restore its values."""
        with self.lock:
            # Journal the children still waiting, so restore covers them too.
            if owner is None:
                self.tick(now=math.inf)
            else:
                self.tick(owner)
            owners = [owner] if owner is not None else list(self.registrations)
            for name in owners:
                self.registrations.pop(name, None)
            for tid, (who, _) in list(self.managed.items()):
                if owner is None or who == owner:
                    del self.managed[tid]
            report = self.actuator.restore(
                owner, between=lambda results: descendants.sweep(self.actuator, results))
        report["owner"] = owner
        report["subsystem"] = SUBSYSTEM
        return report
