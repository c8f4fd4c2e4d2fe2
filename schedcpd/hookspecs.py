"""Hook specifications for subsystem plugins (privileged, run inside schedcpd).

A subsystem plugin (scheduler, io, dvfs, or a third-party one) is a module or
object with ``@hookimpl``-decorated functions.  Built-ins are registered on
the same manager as third-party plugins (entry-point group
``schedcp.plugins``), so this API is exercised by the project itself.

Routing: hooks that act on one subsystem take ``subsystem`` first and are
``firstresult``; the host (:mod:`schedcpd.plugins`) asks the plugin whose
``schedcp_describe`` names that subsystem, and every plugin only for a name
none describes, so an implementation returns ``None`` for a subsystem that
is not its own.

Payloads are typed (:mod:`schedcpd.payloads`; plugins import them, and
everything else they may use, from :mod:`schedcpd.plugin_api`).  Every hook
is documented in docs/plugins.md; a test fails when one is not.
Agent-side plugins use the separate marker in :mod:`schedcpd.agent_hookspecs`
(another pluggy project name), so they can never bind to these hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from schedcpd.breaker import Guards
from schedcpd.const import PLUGIN_PROJECT
from schedcpd.knobs import Knob
from schedcpd.payloads import (
    ActivePolicy,
    ApplyResult,
    Description,
    Finding,
    Health,
    KeyDescription,
    RestoreReport,
    Scope,
)

hookspec = pluggy.HookspecMarker(PLUGIN_PROJECT)
hookimpl = pluggy.HookimplMarker(PLUGIN_PROJECT)


@dataclass
class PluginContext:
    """What the host hands a plugin at start-up.

    ``state_dir`` is private to the daemon (root-only); a plugin keeps its own
    files under ``state_dir / "plugins" / <name>``.  ``config`` is the
    plugin's table from schedcpd.toml (``[plugins.<name>]``), already parsed.
    ``journal`` is the save-before-write journal every kernel write must go
    through (``None`` until the journal is available; ``None`` in a plugin
    run out of process).  ``actuator`` is the core's actuator bound to the
    knobs the plugin declared (``schedcp_knobs``): a
    :class:`schedcpd.actuator.KnobActuator` in process, a proxy of it over
    the private channel out of process; ``None`` for a plugin that declares
    no knobs (or before the journal is available).
    """

    state_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    journal: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    actuator: Any = None


@hookspec
def schedcp_startup(context: PluginContext) -> None:
    """Called once when the daemon starts, before the bus name is owned.

    Detect what the running kernel offers and keep ``context`` for later hooks.
    Raising here disables the plugin (reported in status, log and metrics);
    the daemon stays up.
    """


@hookspec
def schedcp_knobs(config: dict[str, Any]) -> list[Knob] | None:
    """The knobs this plugin may ask the core to write (:mod:`schedcpd.knobs`).

    Called once at start, before ``schedcp_startup``, with the plugin's
    ``[plugins.<name>]`` table.  The core's actuator (``context.actuator``)
    then writes only these: a change outside them is refused with
    ``KnobNotDeclared``.  ``None`` (or not implementing it): no knobs.
    """


@hookspec
def schedcp_shutdown() -> None:
    """Called once at clean daemon stop, after managed state is restored.

    Release processes, probes and file handles the plugin holds.
    """


@hookspec
def schedcp_describe() -> Description | None:
    """Describe the subsystem this plugin provides, or ``None`` if it provides none.

    ``capabilities`` maps each knob or backend to a
    :class:`~schedcpd.payloads.Capability` (the reason says why something is
    absent, e.g. "kernel has no /sys/kernel/sched_ext").  Must be cheap: it is
    called for every ``GetStatus``.
    """


@hookspec(firstresult=True)
def schedcp_observe(subsystem: str) -> dict[str, Any] | None:
    """Return the subsystem's current observable state as JSON-able data.

    Return ``None`` when ``subsystem`` is not this plugin's.
    """


@hookspec(firstresult=True)
def schedcp_validate(subsystem: str, policy: dict[str, Any]) -> list[Finding] | None:
    """Check a parsed policy document for this subsystem without changing anything.

    Return a list of :class:`~schedcpd.payloads.Finding`; an empty list means valid.  Return
    ``None`` when ``subsystem`` is not this plugin's.
    """


@hookspec(firstresult=True)
def schedcp_apply(
    subsystem: str, policy: dict[str, Any], scope: Scope, dry_run: bool
) -> ApplyResult | None:
    """Apply ``policy`` to ``scope`` and return what was changed.

    Every write must be journaled (prior value committed) before it is made.
    With ``dry_run`` true, nothing is written and ``changes`` lists each
    value the apply would write.  The result's ``targets``, ``scope`` and
    ``canary`` tell the deployer how to roll the policy out
    (:class:`~schedcpd.payloads.ApplyResult`).  Return ``None`` when
    ``subsystem`` is not this plugin's.
    """


@hookspec(firstresult=True)
def schedcp_restore(subsystem: str, scope: Scope) -> RestoreReport | None:
    """Restore every value this plugin changed within ``scope`` from the journal.

    Report what was restored and what was skipped (e.g. exited tasks) and
    why.  Called on rollback, stop and start-up after a crash.  Return
    ``None`` when ``subsystem`` is not this plugin's.
    """


@hookspec(firstresult=True)
def schedcp_health(subsystem: str, scope: Scope) -> Health | None:
    """Whether what ``scope["owner"]`` applied still works as applied.

    The deployer calls it every few hundred ms during probation and while a
    deployment is active.  Return ``{"healthy": True}``, or ``{"healthy":
    False, "guard", "baseline", "observed", "detail"}`` (e.g. a scheduler
    loader that died): the circuit breaker trips on it.  ``None`` when
    ``subsystem`` is not this plugin's.  A healthy answer may carry
    ``"targets": {group: [pid, ...]}``, the processes the deployment covers
    now (selectors match processes that start later): the breaker then
    watches those instead of the ones resolved at deploy time.
    """


@hookspec(firstresult=True)
def schedcp_guards(
    subsystem: str, policy: dict[str, Any], targets: dict[str, list[int]]
) -> Guards | None:
    """The guards the circuit breaker judges one deployment of ``policy`` by.

    ``targets`` (group -> pids) are the processes the dry-run apply named.
    Return a :class:`~schedcpd.breaker.Guards`: it samples each group's
    metrics into a :class:`~schedcpd.breaker.GroupSample`, names them and
    words their trip messages (:class:`~schedcpd.breaker.GuardMetrics`), and
    gives each group its role from the baseline and from what the policy
    does to it.  ``None`` when ``subsystem`` is not this plugin's; a
    subsystem with no guards is judged by ``schedcp_health`` alone.
    """


@hookspec(firstresult=True)
def schedcp_state(subsystem: str) -> dict[str, Any] | None:
    """Report what the plugin currently manages (policies, targets, overrides).

    Return ``None`` when ``subsystem`` is not this plugin's.
    """


@hookspec(firstresult=True)
def schedcp_explain_keys(subsystem: str, pid: int) -> list[str] | None:
    """The journal keys under which this subsystem records values it changed on ``pid``.

    For ``Explain``: every thread of this incarnation of the process (not an
    earlier process with the same pid), and shared objects it was put in (a
    cgroup whose values the subsystem set).  A string ending in ``:`` is a
    key prefix, any other an exact key.  Return ``[]`` when the process is
    known but nothing was changed, ``None`` when ``subsystem`` is not this
    plugin's.  Reads only; may run on a worker thread.
    """


@hookspec(firstresult=True)
def schedcp_describe_key(subsystem: str, key: str) -> KeyDescription | None:
    """Name what a journal key of this subsystem stands for, for an operator.

    Return ``{"target": str, "knob": str}`` (e.g. ``task:4242:17`` and
    ``nice``): ``Explain`` groups a deployment's values by target.  ``None``
    when ``subsystem`` is not this plugin's.
    """


@hookspec(firstresult=True)
def schedcp_static_check(
    subsystem: str, policy: dict[str, Any], active: list[ActivePolicy]
) -> list[Finding] | None:
    """Analyse a schema-valid policy's scheduling logic without running it.

    Verifier stage 2: starvation risks (a class with no guaranteed share that
    others depend on), real-time without caps, CPU sets that leave tasks no
    CPU, starving quotas, and conflicts with the ``active`` policies (of live
    deployments of this subsystem).  Return findings as for
    :func:`schedcp_validate`, or ``None`` when ``subsystem`` is not this
    plugin's.
    """


@hookspec(firstresult=True)
def schedcp_kernel_check(subsystem: str, policy: dict[str, Any]) -> list[Finding] | None:
    """Load a policy's kernel artifacts into the kernel's own verifier, without attaching.

    Verifier stage 3, asked only for a policy whose track carries artifacts
    (T2; a T1 policy has none and the stage is skipped).  The scheduler
    plugin compiles the policy's sched_ext scheduler and loads it in its
    micro-VM.  Return findings (empty when the kernel accepted everything);
    an ``info`` finding with code ``artifact`` and a ``binding``
    ``{"object_sha256", "btf_sha256", ...}`` names what was loaded, and the
    token binds it.  Runs on a worker thread; may block.  ``None`` when
    ``subsystem`` is not this plugin's; a subsystem without it cannot verify
    such a policy (the stage fails closed).
    """


@hookspec(firstresult=True)
def schedcp_dynamic_check(
    subsystem: str, policy: dict[str, Any], seconds: float
) -> list[Finding] | None:
    """Run the policy on a synthetic workload in a sandbox for about ``seconds``.

    Verifier stage 4.  Start the workload itself (only processes and cgroups
    it creates), apply the policy to them alone, check every task makes
    progress and the guards hold, restore, and return findings (empty when
    all is well).  ``seconds`` is the time the shortest decision may take;
    a statistical test may measure longer, within a bound it documents,
    and returns an error finding with code ``inconclusive`` when it cannot
    decide (the stage's verdict is then "inconclusive").  Findings may
    carry an ``evidence`` dict.  Runs on a worker thread; may block.
    ``None`` when ``subsystem`` is not this plugin's.
    """
