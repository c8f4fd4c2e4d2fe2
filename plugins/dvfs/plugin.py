"""The dvfs subsystem: cpufreq governor, EPP, frequency limits and boost; task and
cgroup utilisation clamps (uclamp), on the running kernel.

Every value is written by the core's actuator within the plugin's declared
knobs (:mod:`plugins.dvfs.knobs`, :mod:`plugins.dvfs.actuator`), saved in
the journal before it is written and put back exactly on rollback, at daemon
stop and at start-up after a crash; a value someone else changes after us
is left alone and reported as overridden.  The sysfs CPU root and the cgroup
v2 root are injectable (``[plugins.dvfs] sysfs_cpu``, ``cgroup_root``), so
the tests run against a FAKE cpufreq tree.  docs/dvfs.md describes the
knobs, the capability report and what was proven where.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from plugins.dvfs import applier, cpufreq, knobs, uclamp, verification
from plugins.dvfs import policy as policy_mod
from plugins.dvfs.actuator import SUBSYSTEM, Actuator, legacy
from schedcpd.plugin_api import (
    ActivePolicy,
    ApplyResult,
    Capability,
    Description,
    Finding,
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


def _cap(ok: bool, why: str) -> Capability:
    return {"available": ok, "reason": "" if ok else why}


def capabilities(freq: cpufreq.CpuFreq, cgroup_root: Path | None,
                 clamp_ok: tuple[bool, str]) -> dict[str, Capability]:
    """What this kernel offers the dvfs plugin, and why not."""
    pols = freq.policies()
    why = freq.why_absent()
    caps: dict[str, Capability] = {}
    caps["cpufreq.governor"] = _cap(bool(pols), why)
    caps["cpufreq.min_max_freq"] = _cap(bool(pols), why)
    epp = [p for p in pols if freq.preferences(p)]
    caps["cpufreq.epp"] = _cap(bool(epp), why or "the cpufreq driver has no "
                               "energy_performance_preference (only intel_pstate and "
                               "amd-pstate in active mode have it)")
    caps["cpufreq.boost"] = _cap(freq.boost() is not None, why or "the cpufreq driver has no "
                                 "boost switch (cpufreq/boost, intel_pstate/no_turbo)")
    caps["uclamp.task"] = _cap(*clamp_ok)
    ok, cg_why = uclamp.cgroup_available(cgroup_root)
    if not clamp_ok[0] and ok is False:
        cg_why = f"{cg_why}; and {clamp_ok[1]}"
    caps["uclamp.cgroup"] = _cap(ok, cg_why)
    return caps


def _cgroup_root(config: dict[str, Any]) -> Path | None:
    root = config.get("cgroup_root")
    return Path(root) if root else uclamp.cgroup_v2_root()


class DvfsPlugin(JournaledPlugin[Actuator]):
    """Hook implementations of the dvfs subsystem (one instance per daemon)."""

    subsystem = SUBSYSTEM

    def __init__(self) -> None:
        super().__init__()
        self.clamp_ok: tuple[bool, str] = (False, "the dvfs plugin has not started")

    @hookimpl
    def schedcp_startup(self, context: PluginContext) -> None:
        """Detect capabilities (the uclamp probe sets this thread's own clamps to themselves)."""
        config = context.config or {}
        freq = cpufreq.CpuFreq(Path(config.get("sysfs_cpu", cpufreq.DEFAULT_ROOT)))
        cg_root = _cgroup_root(config)
        journal, core = self.bind(context, lambda: knobs.declare(freq.root, cg_root), legacy)
        self.actuator = Actuator(journal, freq, cg_root, core)
        self.clamp_ok = uclamp.probe()
        self.caps = capabilities(freq, self.actuator.cgroup_root, self.clamp_ok)
        missing = sorted(k for k, c in self.caps.items() if not c["available"])
        _LOGGER.info("dvfs plugin ready (%s); unavailable: %s", freq.root,
                     ", ".join(missing) or "none")

    @hookimpl
    def schedcp_knobs(self, config: dict[str, Any]) -> list[Knob]:
        """The cpufreq, boost and cgroup clamp files under the configured roots."""
        return knobs.declare_from(config or {}, _cgroup_root(config or {}))

    @hookimpl
    def schedcp_describe(self) -> Description:
        """The dvfs subsystem and its capabilities (cached at start-up)."""
        return {"name": SUBSYSTEM, "description": "CPU frequency (cpufreq governor, EPP, "
                "frequency limits, boost) and utilisation clamps of tasks and cgroups",
                "capabilities": self.caps}

    @hookimpl
    def schedcp_observe(self, subsystem: str) -> dict[str, Any] | None:
        """Each cpufreq policy's settings, and the boost switch."""
        if subsystem != SUBSYSTEM:
            return None
        freq = self._act().freq
        out: dict[str, Any] = {}
        for pol in freq.policies():
            try:
                out[pol] = {"cpus": freq.related(pol), **{
                    k: freq.read(pol, k) for k in (*cpufreq.POLICY_KNOBS, "cpuinfo_min_freq",
                                                   "cpuinfo_max_freq") if freq.has(pol, k)}}
            except cpufreq.CpuFreqError:
                continue
        switch = freq.boost()
        return {"policies": out, "boost": None if switch is None else
                {"file": str(switch.path), "value": switch.path.read_text().strip()},
                "why_none": freq.why_absent()}

    @hookimpl
    def schedcp_validate(self, subsystem: str, policy: dict[str, Any]) -> list[Finding] | None:
        """Schema and range findings of a dvfs policy."""
        if subsystem != SUBSYSTEM:
            return None
        return policy_mod.validate(policy_body(policy))

    @hookimpl
    def schedcp_apply(self, subsystem: str, policy: dict[str, Any], scope: Scope,
                      dry_run: bool) -> ApplyResult | None:
        """Plan, or make, the policy's writes for ``scope["owner"]``."""
        if subsystem != SUBSYSTEM:
            return None
        return self.apply(
            policy, scope, dry_run,
            lambda _: applier.plan(policy, self._act(), scope.get("pids"), self.clamp_ok),
            applier.apply, "dvfs value(s)",
            "cpufreq, boost and cgroup clamps are machine-wide: applied with every group")

    @hookimpl
    def schedcp_health(self, subsystem: str, scope: Scope) -> Health | None:
        """cpufreq policies still there; follows new descendants; reports the targets."""
        if subsystem != SUBSYSTEM:
            return None
        owner = str(scope.get("owner"))
        policy = self.policies.get(owner)
        if policy is None:
            return {"healthy": True}
        act = self._act()
        for e in act.journal.pending_restore(owner=owner, subsystem=SUBSYSTEM):
            if e.kind.startswith("cpufreq.") and \
                    not act.freq.path(e.key.split(":")[1], "x").parent.is_dir():
                return {"healthy": False, "guard": "cpufreq_policy_removed", "baseline": 1.0,
                        "observed": 0.0, "detail": f"cpufreq {e.key.split(':')[1]} was "
                        "removed (CPU offlined or driver unloaded)"}
        with self._lock:
            targets = self._follow(owner, policy)
            self.check_overrides()
        return {"healthy": True, "targets": targets}

    def _follow(self, owner: str, policy: dict[str, Any]) -> dict[str, list[int]]:
        """Have the core journal the clamps new descendants inherited, so restore covers them."""
        act = self._act()
        targets = {}
        for group in policy.get("group", []):
            targets[group["name"]] = pids = policy_mod.selector(group).scan()
            follow_inherited(act.core, act.journal, owner, SUBSYSTEM, knobs.UCLAMP, pids)
        return targets

    @hookimpl
    def schedcp_static_check(self, subsystem: str, policy: dict[str, Any],
                             active: list[ActivePolicy]) -> list[Finding] | None:
        """Verifier stage 2 (:mod:`plugins.dvfs.verification`)."""
        if subsystem != SUBSYSTEM:
            return None
        return verification.static_check(policy, active, self._act(), self.clamp_ok)

    @hookimpl
    def schedcp_dynamic_check(self, subsystem: str, policy: dict[str, Any],
                              seconds: float) -> list[Finding] | None:
        """Verifier stage 4: group clamps on a test task of its own."""
        if subsystem != SUBSYSTEM:
            return None
        return verification.dynamic_check(policy, seconds, self.clamp_ok)

    @hookimpl
    def schedcp_explain_keys(self, subsystem: str, pid: int) -> list[str] | None:
        """Journal keys of the clamps set on ``pid``'s threads."""
        if subsystem != SUBSYSTEM:
            return None
        return journaled_keys(self._act().journal, thread_keys(knobs.UCLAMP, pid), SUBSYSTEM)

    @hookimpl
    def schedcp_describe_key(self, subsystem: str, key: str) -> KeyDescription | None:
        """What a dvfs journal key stands for."""
        if subsystem != SUBSYSTEM:
            return None
        kind, _, rest = key.partition(":")
        parts = rest.split(":")
        if kind == "cpufreq" and len(parts) == 2:
            return {"target": f"cpufreq {parts[0]}", "knob": parts[1]}
        if kind == "uclamp":
            return {"target": f"task {parts[0]}", "knob": "uclamp"}
        if kind == "cg_uclamp" and len(parts) == 2:
            return {"target": f"cgroup {parts[0]}", "knob": parts[1]}
        if kind == "boost":
            return {"target": "cpufreq", "knob": "boost" if rest == "cpufreq" else "no_turbo"}
        return {"target": kind, "knob": rest}


plugin = DvfsPlugin()
"""The single instance; the host registers this module, whose hooks are its methods."""

schedcp_startup = plugin.schedcp_startup
schedcp_knobs = plugin.schedcp_knobs
schedcp_shutdown = plugin.schedcp_shutdown
schedcp_describe = plugin.schedcp_describe
schedcp_observe = plugin.schedcp_observe
schedcp_validate = plugin.schedcp_validate
schedcp_apply = plugin.schedcp_apply
schedcp_restore = plugin.schedcp_restore
schedcp_health = plugin.schedcp_health
schedcp_state = plugin.schedcp_state
schedcp_static_check = plugin.schedcp_static_check
schedcp_dynamic_check = plugin.schedcp_dynamic_check
schedcp_explain_keys = plugin.schedcp_explain_keys
schedcp_describe_key = plugin.schedcp_describe_key
