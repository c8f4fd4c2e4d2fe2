"""The typed payloads of the daemon hooks (:mod:`schedcpd.hookspecs`).

Each is a ``TypedDict``: at run time a plain JSON-able ``dict`` (what the
hooks always exchanged, and what reaches D-Bus clients), for mypy a checked
shape.  Keys marked ``NotRequired`` (or of a ``total=False`` dict) may be
left out; a plugin may add keys of its own to a finding, an apply result or
a restore report (the engine passes them on to clients untouched).  Plugins import these from
:mod:`schedcpd.plugin_api`.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Severity = Literal["error", "warning", "info"]


class Finding(TypedDict):
    """One verdict of a check (``schedcp_validate`` and the verifier's stages).

    ``field`` is the dotted path in the policy document (``group[1].task.nice``,
    or ``""`` for the whole document).  A finding with severity ``error``
    fails its stage; code ``inconclusive`` marks a measurement that could not
    decide.  ``evidence`` carries the figures behind a verdict; the kernel
    stage's ``artifact`` finding carries the ``binding`` the token signs.  A
    plugin may add detail keys of its own (the scheduler: ``log``, ``stage``).
    """

    code: str
    severity: Severity
    field: str
    message: str
    evidence: NotRequired[dict[str, Any]]
    binding: NotRequired[dict[str, str]]


class Capability(TypedDict):
    """Whether a knob or backend is offered here, and why not."""

    available: bool
    reason: str


class Description(TypedDict):
    """``schedcp_describe``: the subsystem a plugin provides."""

    name: str
    description: str
    capabilities: dict[str, Capability]


class Scope(TypedDict, total=False):
    """What an apply, restore or health call acts on.

    ``owner`` is the deployment id (``"plan"`` for a dry run the deployer
    makes before deploying; absent in a restore of everything the plugin
    changed).  ``pids`` narrows an apply to these processes (a canary
    subset).  ``artifact`` is the token's binding of a T2 policy's artifact
    (``{"digest", ...}``), which the plugin must check before it loads it.
    """

    owner: str
    pids: list[int]
    artifact: dict[str, str] | None


class Change(TypedDict, total=False):
    """One value an apply wrote (or would write, in a dry run)."""

    target: str
    knob: str
    before: Any
    after: Any
    status: str
    note: str


class ApplyResult(TypedDict, total=False):
    """``schedcp_apply``: what was changed, and how the deployer should roll it out.

    ``targets`` (group -> pids) are the processes the policy covers; the
    deployer samples guards for them and takes the canary from them.
    ``scope`` is ``"machine"`` when the change's narrowest scope is the whole
    machine (a canary cannot be a subset of processes); then ``canary`` is
    ``"partial"`` when the plugin can run all the targets in a restricted
    mode first (judged on progress and health only), ``"machine"`` when not.
    ``reason`` and ``full_scope_reason`` word the deployment's state for a
    canary apply (else the deployer's neutral wording is used).
    """

    subsystem: str
    owner: str
    policy: str
    dry_run: bool
    targets: dict[str, list[int]]
    changes: list[Change]
    summary: dict[str, int]
    problems: list[Any]
    note: str
    scope: Literal["processes", "machine"]
    canary: Literal["partial", "machine"]
    partial: bool
    reason: str
    full_scope_reason: str


class RestoreReport(TypedDict, total=False):
    """``schedcp_restore``: each journal entry's outcome, and counts per outcome."""

    entries: list[dict[str, Any]]
    summary: dict[str, int]


class Health(TypedDict, total=False):
    """``schedcp_health``: whether a deployment still works as applied.

    Unhealthy: ``guard``, ``baseline``, ``observed`` and ``detail`` say what
    broke, and the breaker trips with them.  Healthy: ``targets`` may name
    the processes the deployment covers now (selectors match processes that
    start later).
    """

    healthy: bool
    guard: str
    baseline: float
    observed: float
    detail: str
    targets: dict[str, list[int]]


class ActivePolicy(TypedDict):
    """A policy of a live deployment, for ``schedcp_static_check``'s conflict analysis.

    ``document`` is the policy's stored TOML text.
    """

    policy_id: str
    name: str
    subsystem: str
    document: str
    deployment_id: str


class KeyDescription(TypedDict):
    """``schedcp_describe_key``: what a journal key stands for."""

    target: str
    knob: str
