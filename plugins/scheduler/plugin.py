"""The scheduler subsystem: T1 (config-only) and T2 (sched_ext) policies on the running kernel.

What it changes, for the operator: per task the scheduling policy
(SCHED_OTHER/BATCH/IDLE; FIFO/RR only when a policy allows it with a
priority cap), nice, the EEVDF slice, CPU affinity, timer slack and
autogroup nice; per cgroup ``cpu.shares``/``cpu.idle``/quota and ``cpuset``
in cgroups it creates, ``schedcp.<owner>.<group>`` at the top of the
hierarchy (it moves only the tasks a policy targets), or, where systemd
owns a cgroup v2 tree, as runtime properties of the targets' own units
(``CPUWeight``, ``CPUQuota``, ``AllowedCPUs``; no process leaves its unit);
and allow-listed
``kernel.sched_*`` sysctls.  Every value is saved in the journal before it
is written and is put back exactly on restore, on daemon stop and at
start-up after a crash.  A value someone else changes
after us is left alone and reported as overridden.  A T2 policy runs its
BPF scheduler through a supervised, journaled loader
(:mod:`plugins.scheduler.scx_deploy`).

The host may register this module (its module-level hook functions delegate
to the single :data:`plugin` instance) or the object :data:`plugin` itself;
register one of the two, not both.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from plugins.scheduler import (
    capabilities,
    cgroups,
    dynamic,
    guards,
    journal_keys,
    sched_ext,
    scx_policy,
    sysctl,
    unit_groups,
    verification,
)
from plugins.scheduler import policy as policy_mod
from plugins.scheduler.actuator import SUBSYSTEM, Actuator
from plugins.scheduler.applier import Applier
from plugins.scheduler.scx_deploy import JOURNAL_SUBSYSTEM, ScxHost
from plugins.scheduler.systemd import SystemdClient
from plugins.scheduler.watcher import TaskWatcher
from schedcpd.plugin_api import (
    OVERRIDDEN,
    Guards,
    InvalidArgument,
    Journal,
    NotSupported,
    PluginContext,
    hookimpl,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_CONFIG: dict[str, Any] = {
    "cgroup_parent": "",
    "cgroup_backend": "auto",
    "systemd_bus": "",
    "netlink": True,
    "scan_interval": 0.25,
    "override_check_interval": 2.0,
    "inherit_delay": 0.1,
}


def _inherit_delay(value: Any) -> float:
    """``[plugins.scheduler] inherit_delay``: a number of seconds in [0, 10]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        raise InvalidArgument(
            f"[plugins.scheduler] inherit_delay = {value!r}: must be seconds in [0, 10]"
        )
    return float(value)


def _cgroup_parent(value: Any) -> str:
    """``[plugins.scheduler] cgroup_parent``: "" (top level) or one directory name."""
    if not isinstance(value, str) or (value and cgroups.safe_name(value) != value):
        raise InvalidArgument(
            f"[plugins.scheduler] cgroup_parent = {value!r}: must be \"\" (the top of the "
            "hierarchy) or one directory name of letters, digits, '_', '.', '-'"
        )
    return value


class SchedulerPlugin:
    """Hook implementations of the scheduler subsystem (one instance per daemon)."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = dict(DEFAULT_CONFIG)
        self.journal: Journal | None = None
        self.own_journal = False
        self.caps: dict[str, dict[str, Any]] = {}
        self.applier: Applier | None = None
        self.scx: ScxHost | None = None
        self.watcher: TaskWatcher | None = None
        self._stop = threading.Event()
        self.backend: tuple[str, str] = ("cgroupfs", "not started")
        self.systemd: SystemdClient | None = None
        self._checker: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------

    @hookimpl
    def schedcp_startup(self, context: PluginContext) -> None:
        """Detect capabilities and bind the journal; no kernel write happens here."""
        self.config = {**DEFAULT_CONFIG, **(context.config or {})}
        journal = context.journal
        if journal is None:
            _LOGGER.warning("no journal from the host; opening %s", context.state_dir)
            journal = Journal(Path(context.state_dir) / "journal.db")
            self.own_journal = True
        self.journal = journal
        self.caps = capabilities.detect()
        hierarchies = cgroups.detect_hierarchies()
        self.backend = unit_groups.choose_backend(
            str(self.config["cgroup_backend"]), unit_groups.systemd_booted(), hierarchies)
        self.systemd = None
        if self.backend[0] == "systemd":
            self.systemd = SystemdClient(str(self.config["systemd_bus"]) or None)
        actuator = Actuator(journal, hierarchies, self.systemd)
        self.applier = Applier(actuator, hierarchies, _cgroup_parent(self.config["cgroup_parent"]),
                               _inherit_delay(self.config["inherit_delay"]),
                               unit_groups.UnitGroups(self.systemd) if self.systemd else None)
        _LOGGER.info("cgroup knobs: %s backend (%s)", *self.backend)
        self.scx = ScxHost(journal, self.config, Path(context.state_dir))
        self._stop.clear()
        missing = sorted(name for name, cap in self.caps.items() if not cap["available"])
        _LOGGER.info("scheduler plugin ready; unavailable: %s", ", ".join(missing) or "none")

    @hookimpl
    def schedcp_shutdown(self) -> None:
        """Stop the watcher and the override checker; close our own journal."""
        self._stop_background()
        if self.own_journal and self.journal is not None:
            self.journal.close()
        self.journal = None
        self.applier = None
        self.scx = None
        if self.systemd is not None:
            self.systemd.close()
            self.systemd = None

    def _start_background(self) -> None:
        assert self.applier is not None
        if self.watcher is None:
            self.watcher = TaskWatcher(
                self.applier.on_new,
                self.applier.on_exit,
                prefer_netlink=bool(self.config["netlink"]),
                scan_interval=float(self.config["scan_interval"]),
                on_tick=self.applier.tick,
            )
            self.watcher.start()
        if self._checker is None:
            self._stop.clear()
            self._checker = threading.Thread(
                target=self._check_loop, name="schedcp-override-check", daemon=True
            )
            self._checker.start()

    def _stop_background(self) -> None:
        self._stop.set()
        if self._checker is not None:
            self._checker.join(timeout=5)
            self._checker = None
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _check_loop(self) -> None:
        interval = float(self.config["override_check_interval"])
        while not self._stop.wait(interval):
            applier = self.applier
            if applier is None:
                return
            try:
                applier.actuator.check_overrides()
            except Exception:  # keep checking; the log has the cause
                _LOGGER.exception("override check failed")

    def _require(self) -> Applier:
        if self.applier is None:
            raise NotSupported("scheduler plugin is not started")
        return self.applier

    def _require_scx(self) -> ScxHost:
        if self.scx is None:
            raise NotSupported("scheduler plugin is not started")
        return self.scx

    # -- hooks ------------------------------------------------------------

    @hookimpl
    def schedcp_describe(self) -> dict[str, Any] | None:
        """Name, operator description and detected capabilities (cached)."""
        return {
            "name": SUBSYSTEM,
            "description": (__doc__ or "").strip(),
            "capabilities": self.caps,
        }

    @hookimpl
    def schedcp_observe(self, subsystem: str) -> dict[str, Any] | None:
        """Global scheduler state: sched sysctls, cgroup hierarchies, sched_ext."""
        if subsystem != SUBSYSTEM:
            return None
        values = {}
        for name in sysctl.available_sysctls():
            try:
                values[name] = sysctl.read_sysctl(name)
            except OSError:
                continue
        return {
            "sysctl": values,
            "cgroup_hierarchies": {
                c: {"mount": str(h.mount), "version": h.version}
                for c, h in cgroups.detect_hierarchies().items()
            },
            "cgroup_backend": {"name": self.backend[0], "reason": self.backend[1]},
            "sched_ext": sched_ext.detect(
                self.scx.root if self.scx else sched_ext.SCHED_EXT_DIR),
            "watcher": self._watcher_state(),
        }

    @hookimpl
    def schedcp_validate(
        self, subsystem: str, policy: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """Schema and range findings for a parsed T1 or T2 (sched_ext) policy."""
        if subsystem != SUBSYSTEM:
            return None
        # ``_source`` (optional) is the file name the host read the document from.
        doc = {k: v for k, v in policy.items() if k != "_source"}
        if scx_policy.is_t2(doc):
            return scx_policy.validate(doc, str(policy.get("_source", "<policy>")))
        return policy_mod.validate(doc, str(policy.get("_source", "<policy>")))

    @hookimpl
    def schedcp_apply(
        self, subsystem: str, policy: dict[str, Any], scope: dict[str, Any], dry_run: bool
    ) -> dict[str, Any] | None:
        """Apply a policy for ``scope["owner"]``.

        T1: the knobs of the policy's groups (optionally only ``scope["pids"]``).
        T2: start the policy's sched_ext scheduler with the supervised loader
        (the whole machine; :mod:`plugins.scheduler.scx_deploy`).
        """
        if subsystem != SUBSYSTEM:
            return None
        doc = {k: v for k, v in policy.items() if k != "_source"}
        if scx_policy.is_t2(doc):
            result = self._require_scx().apply(doc, scope, dry_run)
            if not dry_run and "pids" in scope:  # a canary: the deployer's state reason
                result.update(_scx_canary_reasons(result))
            return result
        applier = self._require()
        result = applier.apply(doc, scope, dry_run)
        if not dry_run:
            self._start_background()
        return result

    @hookimpl
    def schedcp_restore(self, subsystem: str, scope: dict[str, Any]) -> dict[str, Any] | None:
        """Restore ``scope["owner"]``'s values, or every value of this plugin for ``{}``."""
        if subsystem != SUBSYSTEM:
            return None
        applier = self._require()
        owner = scope.get("owner")
        # The loader first: a trip must hand the machine back to EEVDF at once.
        scx = self._require_scx().restore(str(owner) if owner is not None else None)
        report = applier.restore(str(owner) if owner is not None else None)
        if not applier.registrations:
            self._stop_background()
        if scx["entries"]:
            report["sched_ext"] = scx
            report["entries"] = scx["entries"] + report["entries"]
            for outcome, n in scx["summary"].items():
                report["summary"][outcome] = report["summary"].get(outcome, 0) + n
        return report

    @hookimpl
    def schedcp_health(self, subsystem: str, scope: dict[str, Any]) -> dict[str, Any] | None:
        """Whether ``scope["owner"]``'s sched_ext scheduler still runs (T1: always healthy).

        For a T1 policy also the processes it covers now (``targets``).
        """
        if subsystem != SUBSYSTEM:
            return None
        owner = str(scope.get("owner"))
        health = self._require_scx().health(owner)
        if health is not None:
            return health
        targets = self._require().targets(owner)
        return {"healthy": True} if targets is None else {"healthy": True, "targets": targets}

    @hookimpl
    def schedcp_guards(
        self, subsystem: str, policy: dict[str, Any], targets: dict[str, list[int]]
    ) -> Guards | None:
        """CPU guard metrics of the targets, and roles from what the policy does to them."""
        if subsystem != SUBSYSTEM:
            return None
        return guards.guards_for(policy, targets)

    @hookimpl
    def schedcp_state(self, subsystem: str) -> dict[str, Any] | None:
        """Applied policies, their targets, values managed, and manual overrides."""
        if subsystem != SUBSYSTEM:
            return None
        applier = self._require()
        applier.actuator.check_overrides()
        journal = applier.actuator.journal
        open_entries = journal.pending_restore(subsystem=SUBSYSTEM)
        counts: dict[str, int] = {}
        for entry in open_entries:
            counts[entry.owner] = counts.get(entry.owner, 0) + 1
        with applier.lock:
            policies = [
                {
                    "owner": reg.owner,
                    "policy": reg.policy.name,
                    "applied_at": reg.applied_at,
                    "scope_pids": reg.scope_pids,
                    "targets": {g: sorted(p) for g, p in reg.targets.items()},
                    "new_tasks_handled": reg.new_tasks,
                }
                for reg in applier.registrations.values()
            ]
        overrides = [
            {"owner": e.owner, "kind": e.kind, "key": e.key, "ours": e.new, "note": e.note}
            for e in journal.entries(state=OVERRIDDEN, subsystem=SUBSYSTEM, limit=100)
        ]
        return {
            "policies": policies,
            "managed_values": counts,
            "overrides": overrides,
            "watcher": self._watcher_state(),
            "sched_ext": self._require_scx().state(),
        }

    @hookimpl
    def schedcp_static_check(
        self, subsystem: str, policy: dict[str, Any], active: list[dict[str, Any]]
    ) -> list[dict[str, Any]] | None:
        """Verifier stage 2: starvation, RT, cpuset, quota and conflict analysis.

        For a T2 policy: the BPF source rules (``scx_rules``) instead.
        """
        if subsystem != SUBSYSTEM:
            return None
        if scx_policy.is_t2(policy):
            return scx_policy.static_check(policy)
        return verification.static_check(policy, active)

    @hookimpl
    def schedcp_kernel_check(
        self, subsystem: str, policy: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """Verifier stage 3: a T2 policy's scheduler loaded into the micro-VM's BPF verifier."""
        if subsystem != SUBSYSTEM:
            return None
        if not scx_policy.is_t2(policy):
            return []  # a T1 policy loads nothing into the kernel
        return scx_policy.kernel_check(policy)

    @hookimpl
    def schedcp_dynamic_check(
        self, subsystem: str, policy: dict[str, Any], seconds: float
    ) -> list[dict[str, Any]] | None:
        """Verifier stage 4: the policy on its own synthetic workload, then restored.

        A T2 policy runs in the sched_ext micro-VM.
        """
        if subsystem != SUBSYSTEM:
            return None
        if scx_policy.is_t2(policy):
            return scx_policy.dynamic_check(policy, seconds)
        return dynamic.dynamic_check(
            policy,
            seconds,
            apply=lambda doc, owner: self.schedcp_apply(SUBSYSTEM, doc, {"owner": owner}, False),
            restore=lambda owner: self.schedcp_restore(SUBSYSTEM, {"owner": owner}),
            place=self._place_sandbox if self.systemd is not None else None,
            release=self._release_sandbox if self.systemd is not None else None,
        )

    @hookimpl
    def schedcp_explain_keys(self, subsystem: str, pid: int) -> list[str] | None:
        """Journal keys of ``pid``'s threads and of the cgroups they were moved into."""
        if subsystem != SUBSYSTEM or self.journal is None:
            return None
        return journal_keys.keys_of_process(self.journal, pid)

    @hookimpl
    def schedcp_describe_key(self, subsystem: str, key: str) -> dict[str, Any] | None:
        """The target and knob a journal key of this plugin stands for."""
        if subsystem not in (SUBSYSTEM, JOURNAL_SUBSYSTEM):
            return None
        return journal_keys.describe_key(key)

    def _place_sandbox(self, owner: str, role: str, pid: int) -> None:
        """On a systemd host: a sandbox process goes into a transient scope of its own."""
        assert self.systemd is not None
        unit_groups.place_in_scope(self.systemd, owner, role, pid)

    def _release_sandbox(self, owner: str) -> None:
        """The end of a run placed by :meth:`_place_sandbox`: its slices are stopped."""
        assert self.systemd is not None
        stopped = unit_groups.release_sandbox(self.systemd, owner)
        _LOGGER.debug("verifier sandbox %s: stopped %s", owner, ", ".join(stopped))

    def _watcher_state(self) -> dict[str, Any]:
        if self.watcher is None:
            return {"mode": "stopped", "reason": "no policy applied"}
        waiting = len(self.applier.children) if self.applier is not None else 0
        return {"mode": self.watcher.mode, "reason": self.watcher.reason,
                "children_waiting": waiting}


def _scx_canary_reasons(applied: dict[str, Any]) -> dict[str, str]:
    """What the deployer records for a sched_ext canary, in this subsystem's words."""
    if applied.get("partial"):
        reason = (f"sched_ext scheduler {applied.get('ops')!r} enabled for the targets "
                  f"only: {applied.get('note')}")
    else:
        reason = (f"sched_ext scheduler {applied.get('ops')!r} enabled "
                  f"({applied.get('note')}); a BPF scheduler runs every task: its "
                  "narrowest scope is the machine")
    return {"reason": reason, "full_scope_reason": "full-scope probation (the scheduler "
            "has run machine-wide since the canary)"}


plugin = SchedulerPlugin()


# Module-level hook functions for a host that registers this module itself;
# each delegates to the single instance above.  A host that registers
# ``plugin`` instead gets the same behaviour (register one or the other).


@hookimpl
def schedcp_startup(context: PluginContext) -> None:
    """See :meth:`SchedulerPlugin.schedcp_startup`."""
    plugin.schedcp_startup(context)


@hookimpl
def schedcp_shutdown() -> None:
    """See :meth:`SchedulerPlugin.schedcp_shutdown`."""
    plugin.schedcp_shutdown()


@hookimpl
def schedcp_describe() -> dict[str, Any] | None:
    """See :meth:`SchedulerPlugin.schedcp_describe`."""
    return plugin.schedcp_describe()


@hookimpl
def schedcp_observe(subsystem: str) -> dict[str, Any] | None:
    """See :meth:`SchedulerPlugin.schedcp_observe`."""
    return plugin.schedcp_observe(subsystem)


@hookimpl
def schedcp_validate(subsystem: str, policy: dict[str, Any]) -> list[dict[str, Any]] | None:
    """See :meth:`SchedulerPlugin.schedcp_validate`."""
    return plugin.schedcp_validate(subsystem, policy)


@hookimpl
def schedcp_apply(
    subsystem: str, policy: dict[str, Any], scope: dict[str, Any], dry_run: bool
) -> dict[str, Any] | None:
    """See :meth:`SchedulerPlugin.schedcp_apply`."""
    return plugin.schedcp_apply(subsystem, policy, scope, dry_run)


@hookimpl
def schedcp_restore(subsystem: str, scope: dict[str, Any]) -> dict[str, Any] | None:
    """See :meth:`SchedulerPlugin.schedcp_restore`."""
    return plugin.schedcp_restore(subsystem, scope)


@hookimpl
def schedcp_guards(
    subsystem: str, policy: dict[str, Any], targets: dict[str, list[int]]
) -> Guards | None:
    """Delegate to :data:`plugin`."""
    return plugin.schedcp_guards(subsystem, policy, targets)


@hookimpl
def schedcp_state(subsystem: str) -> dict[str, Any] | None:
    """See :meth:`SchedulerPlugin.schedcp_state`."""
    return plugin.schedcp_state(subsystem)


@hookimpl
def schedcp_health(subsystem: str, scope: dict[str, Any]) -> dict[str, Any] | None:
    """See :meth:`SchedulerPlugin.schedcp_health`."""
    return plugin.schedcp_health(subsystem, scope)


@hookimpl
def schedcp_static_check(
    subsystem: str, policy: dict[str, Any], active: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """See :meth:`SchedulerPlugin.schedcp_static_check`."""
    return plugin.schedcp_static_check(subsystem, policy, active)


@hookimpl
def schedcp_kernel_check(subsystem: str, policy: dict[str, Any]) -> list[dict[str, Any]] | None:
    """See :meth:`SchedulerPlugin.schedcp_kernel_check`."""
    return plugin.schedcp_kernel_check(subsystem, policy)


@hookimpl
def schedcp_dynamic_check(
    subsystem: str, policy: dict[str, Any], seconds: float
) -> list[dict[str, Any]] | None:
    """See :meth:`SchedulerPlugin.schedcp_dynamic_check`."""
    return plugin.schedcp_dynamic_check(subsystem, policy, seconds)


@hookimpl
def schedcp_explain_keys(subsystem: str, pid: int) -> list[str] | None:
    """See :meth:`SchedulerPlugin.schedcp_explain_keys`."""
    return plugin.schedcp_explain_keys(subsystem, pid)


@hookimpl
def schedcp_describe_key(subsystem: str, key: str) -> dict[str, Any] | None:
    """See :meth:`SchedulerPlugin.schedcp_describe_key`."""
    return plugin.schedcp_describe_key(subsystem, key)
