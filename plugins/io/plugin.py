"""The io subsystem: per-device I/O scheduler and queue settings, per-task I/O
priority, and cgroup v1 blkio throttling, on the running kernel.

Every value is written by the core's actuator within the plugin's declared
knobs (:mod:`plugins.io.knobs`), except the blkio cgroup directories and
moves no knob can express (:mod:`plugins.io.actuator`); each is saved in the
journal before it is written and put back exactly on rollback, at daemon
stop and at start-up after a crash; a value someone else changes after us
is left alone and reported as overridden.  docs/io.md describes the knobs,
the capability report and what was proven on this machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from plugins.io import applier, blkio, blockdev, ioprio, knobs, verification
from plugins.io import policy as policy_mod
from plugins.io.actuator import SUBSYSTEM, Actuator, legacy
from plugins.io.guards import IoGuards
from schedcpd.plugin_api import (
    ActivePolicy,
    ApplyResult,
    Capability,
    Description,
    Finding,
    Guards,
    Health,
    JournaledPlugin,
    KeyDescription,
    Knob,
    PluginContext,
    Scope,
    follow_inherited,
    hookimpl,
    journaled_keys,
    policy_body,
    thread_keys,
)

_LOGGER = logging.getLogger(__name__)
GUARD_OWNER = "io-guards"
"""Journal owner of kernel.task_delayacct, turned on for the guards (restored at stop)."""


def capabilities() -> dict[str, Capability]:
    """What this kernel offers the io plugin, and why not."""
    devs = [d for d in blockdev.devices() if (blockdev.SYSFS / d / "queue/scheduler").exists()]
    offered = set()
    for dev in devs:
        offered.update(blockdev.schedulers(dev)[1])
    caps: dict[str, Capability] = {}
    for sched in blockdev.SCHEDULERS:
        caps[f"scheduler.{sched}"] = {
            "available": sched in offered,
            "reason": "" if sched in offered else
            f"no device here offers {sched} (kernel built without it, or module not loaded)"}
    caps["queue"] = {"available": bool(devs), "reason": "" if devs else "no block devices"}
    ok, why = ioprio.available()
    caps["ioprio"] = {"available": ok, "reason": why}
    ok, why = blkio.v1_available()
    caps["cgroup.v1.blkio.throttle"] = {"available": ok, "reason": why}
    ok, why = blkio.v2_io_available()
    for knob in ("io.max", "io.weight", "io.latency"):
        caps[f"cgroup.v2.{knob}"] = {"available": ok, "reason": why}
    delay = Path("/proc/sys/kernel/task_delayacct").exists()
    caps["guard.blkio_delay"] = {"available": delay, "reason": "" if delay else
                                 "kernel has no task delay accounting (CONFIG_TASK_DELAY_ACCT)"}
    return caps


class IoPlugin(JournaledPlugin[Actuator]):
    """Hook implementations of the io subsystem (one instance per daemon)."""

    subsystem = SUBSYSTEM

    def __init__(self) -> None:
        super().__init__()
        self.state_dir = Path("/var/lib/schedcp")

    @hookimpl
    def schedcp_startup(self, context: PluginContext) -> None:
        """Detect capabilities and bind the journal; nothing is written here."""
        journal, core = self.bind(context, knobs.declare, legacy)
        self.actuator = Actuator(journal, core)
        self.state_dir = Path(context.state_dir)
        self.caps = capabilities()
        missing = sorted(k for k, c in self.caps.items() if not c["available"])
        _LOGGER.info("io plugin ready; unavailable: %s", ", ".join(missing) or "none")

    @hookimpl
    def schedcp_knobs(self, config: dict[str, Any]) -> list[Knob]:
        """Queue files, scheduler, ioprio, delay accounting and throttle files."""
        return knobs.declare()

    @hookimpl
    def schedcp_describe(self) -> Description:
        """The io subsystem and its capabilities (cached at start-up)."""
        return {"name": SUBSYSTEM, "description": "Block-device I/O schedulers and queue "
                "settings, per-task I/O priority, cgroup I/O throttling",
                "capabilities": self.caps}

    @hookimpl
    def schedcp_observe(self, subsystem: str) -> dict[str, Any] | None:
        """Each device's scheduler and queue settings."""
        if subsystem != SUBSYSTEM:
            return None
        out: dict[str, Any] = {}
        for dev in blockdev.devices():
            try:
                active, offered = blockdev.schedulers(dev)
                out[dev] = {"scheduler": active, "offered": offered,
                            **{k: blockdev.read(dev, k) for k in blockdev.QUEUE_KNOBS}}
            except blockdev.DeviceGone:
                continue
        return {"devices": out}

    @hookimpl
    def schedcp_validate(self, subsystem: str, policy: dict[str, Any]) -> list[Finding] | None:
        """Schema and range findings of an io policy."""
        if subsystem != SUBSYSTEM:
            return None
        return policy_mod.validate(policy_body(policy))

    @hookimpl
    def schedcp_apply(self, subsystem: str, policy: dict[str, Any], scope: Scope,
                      dry_run: bool) -> ApplyResult | None:
        """Plan, or make, the policy's writes for ``scope["owner"]``."""
        if subsystem != SUBSYSTEM:
            return None
        return self.apply(policy, scope, dry_run,
                          lambda owner: applier.plan(policy, owner, scope.get("pids")),
                          applier.apply, "io value(s)",
                          "device settings applied machine-wide with every group")

    @hookimpl
    def schedcp_guards(self, subsystem: str, policy: dict[str, Any],
                       targets: dict[str, list[int]]) -> Guards | None:
        """Block-I/O wait and I/O rate per group (turns delay accounting on, journaled)."""
        if subsystem != SUBSYSTEM:
            return None
        key = "sysctl:kernel.task_delayacct"
        cap = self.caps.get("guard.blkio_delay")
        if cap is not None and cap["available"]:
            with self._lock:
                act = self._act()
                live = Path("/proc/sys/kernel/task_delayacct").read_text().strip()
                if live != "1":
                    act.write(GUARD_OWNER, "sysctl", key, live, "1")
        return IoGuards(policy, dict(targets))

    @hookimpl
    def schedcp_health(self, subsystem: str, scope: Scope) -> Health | None:
        """Devices still there; follows new descendants; reports the targets now."""
        if subsystem != SUBSYSTEM:
            return None
        owner = str(scope.get("owner"))
        policy = self.policies.get(owner)
        if policy is None:
            return {"healthy": True}
        for dev in policy.get("device", []):
            if blockdev.identity(dev["name"]) is None:
                return {"healthy": False, "guard": "device_removed", "baseline": 1.0,
                        "observed": 0.0, "detail": f"device {dev['name']} was removed"}
        with self._lock:
            targets = self._follow(owner, policy)
            self.check_overrides()
        return {"healthy": True, "targets": targets}

    def _follow(self, owner: str, policy: dict[str, Any]) -> dict[str, list[int]]:
        """Have the core journal the ioprio new descendants inherited, so restore covers them."""
        act = self._act()
        targets = {}
        for group in policy.get("group", []):
            targets[group["name"]] = pids = policy_mod.selector(group).scan()
            if group.get("ioprio"):
                follow_inherited(act.core, act.journal, owner, SUBSYSTEM, knobs.IOPRIO, pids)
        return targets

    @hookimpl
    def schedcp_static_check(self, subsystem: str, policy: dict[str, Any],
                             active: list[ActivePolicy]) -> list[Finding] | None:
        """Verifier stage 2 (:mod:`plugins.io.verification`)."""
        if subsystem != SUBSYSTEM:
            return None
        return verification.static_check(policy, active, self.state_dir)

    @hookimpl
    def schedcp_dynamic_check(self, subsystem: str, policy: dict[str, Any],
                              seconds: float) -> list[Finding] | None:
        """Verifier stage 4: fio on a scratch loop device."""
        if subsystem != SUBSYSTEM:
            return None
        return verification.dynamic_check(policy, seconds, None)

    @hookimpl
    def schedcp_explain_keys(self, subsystem: str, pid: int) -> list[str] | None:
        """Journal keys of the io values set on ``pid``'s threads and blkio cgroup."""
        if subsystem != SUBSYSTEM:
            return None
        keys = thread_keys(knobs.IOPRIO, pid)
        start = ioprio.start_time(pid)
        if start is not None:
            keys.append(f"blkio_move:{pid}:{start}")
        return journaled_keys(self._act().journal, keys, SUBSYSTEM)

    @hookimpl
    def schedcp_describe_key(self, subsystem: str, key: str) -> KeyDescription | None:
        """What an io journal key stands for."""
        if subsystem != SUBSYSTEM:
            return None
        kind, _, rest = key.partition(":")
        parts = rest.split(":")
        if kind == "queue" and len(parts) >= 3:
            return {"target": f"device {parts[0]}", "knob": ":".join(parts[2:])}
        if kind == "ioprio":
            return {"target": f"task {parts[0]}", "knob": "ioprio"}
        if kind == "blkio_move":
            return {"target": f"process {parts[0]}", "knob": "blkio cgroup"}
        if kind == "blkio" and len(parts) >= 3:
            return {"target": f"cgroup {parts[0]}", "knob": parts[1]}
        return {"target": kind, "knob": rest}


plugin = IoPlugin()
"""The single instance; the host registers this module, whose hooks are its methods."""

schedcp_startup = plugin.schedcp_startup
schedcp_knobs = plugin.schedcp_knobs
schedcp_shutdown = plugin.schedcp_shutdown
schedcp_describe = plugin.schedcp_describe
schedcp_observe = plugin.schedcp_observe
schedcp_validate = plugin.schedcp_validate
schedcp_apply = plugin.schedcp_apply
schedcp_restore = plugin.schedcp_restore
schedcp_guards = plugin.schedcp_guards
schedcp_health = plugin.schedcp_health
schedcp_state = plugin.schedcp_state
schedcp_static_check = plugin.schedcp_static_check
schedcp_dynamic_check = plugin.schedcp_dynamic_check
schedcp_explain_keys = plugin.schedcp_explain_keys
schedcp_describe_key = plugin.schedcp_describe_key
