"""The one table of tools: each is one schedcpd D-Bus method.

The D-Bus client (:mod:`schedcp_agent.client`: member name, signature,
argument order), the Claude tool definitions (:func:`claude_tools`: name,
description, JSON schema) and the MCP server's tools (:mod:`schedcp_mcp.tools`:
every entry of the table, with the same name, description and schema) are
generated from :data:`TOOLS`, so a method is declared exactly once on the
client side.  Argument checks for what a model sends (:func:`check_arguments`)
use the same declarations, for the agent's model and for an MCP client alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from schedcpd.const import (
    ACTION_DEPLOY,
    ACTION_OBSERVE,
    ACTION_SUBMIT,
    ACTION_VERIFY,
)

_JSON_TYPES = {"s": "string", "i": "integer", "u": "integer", "d": "number", "b": "boolean"}


@dataclass(frozen=True)
class Arg:
    """One input argument of a method: name, D-Bus type code, meaning, JSON limits."""

    name: str
    dbus: str
    description: str
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def schema(self) -> dict[str, Any]:
        """JSON-schema fragment for this argument."""
        out: dict[str, Any] = {"type": _JSON_TYPES[self.dbus], "description": self.description}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


@dataclass(frozen=True)
class Tool:
    """One D-Bus method of ``org.schedcp.Control1.Manager`` as the agent uses it."""

    name: str
    description: str
    action: str
    args: tuple[Arg, ...] = ()
    out: str = "s"
    json_out: tuple[bool, ...] = (True,)
    roles: frozenset[str] = field(default_factory=frozenset)
    out_names: tuple[str, ...] = ()
    """Names of the results when there are several (the daemon's out_args names)."""

    @property
    def read_only(self) -> bool:
        """Whether the method only reads (its action is observe)."""
        return self.action == ACTION_OBSERVE

    @property
    def signature(self) -> str:
        """The D-Bus input signature."""
        return "".join(a.dbus for a in self.args)

    def schema(self) -> dict[str, Any]:
        """JSON schema of the input object (every argument required, nothing else)."""
        return {
            "type": "object",
            "properties": {a.name: a.schema() for a in self.args},
            "required": [a.name for a in self.args],
            "additionalProperties": False,
        }


_PLAN = frozenset({"plan"})
_OBS_PLAN = frozenset({"observe", "plan"})

TOOLS: tuple[Tool, ...] = (
    Tool("GetSummary", "Host workload summary over the daemon's sampling window: CPU per core, "
         "load, PSI, run-queue wait, context switches, forks, and the busiest processes with a "
         "class (cpu-bound, io-bound, interactive, churn, mixed). Cheap; use brief first.",
         ACTION_OBSERVE, (Arg("detail", "s", "how much to return", ("brief", "normal", "full")),),
         roles=_OBS_PLAN),
    Tool("RunPerfStat", "Time-boxed perf stat (task-clock, context switches, migrations, "
         "faults) of one process (pid) or cgroup; costs the host something: only when the "
         "summary leaves the workload unclear.", ACTION_SUBMIT,
         (Arg("pid", "i", "process id, 0 for none", minimum=0),
          Arg("cgroup", "s", "cgroup path as in /proc/PID/cgroup, empty for none"),
          Arg("seconds", "d", "how long to count (capped by the daemon)", minimum=0.1,
              maximum=30)), roles=_OBS_PLAN),
    Tool("ListProbes", "The catalogue of prebuilt BPF probes and whether each works here.",
         ACTION_OBSERVE, roles=_OBS_PLAN),
    Tool("RunProbe", "Attach one catalogue BPF probe (e.g. a run-queue latency histogram) for "
         "a few seconds, optionally for one pid; rate-limited.", ACTION_SUBMIT,
         (Arg("name", "s", "probe name from ListProbes"),
          Arg("seconds", "d", "attach time (capped)", minimum=0.1, maximum=60),
          Arg("pid", "i", "process id, 0 for all", minimum=0)), roles=_OBS_PLAN),
    Tool("ListPolicies", "Search the policy repository (full text over name, description, "
         "target workloads, tags); returns id, name, subsystem (scheduler, io, dvfs, or a "
         "multi-subsystem policy's parts joined by '+': scheduler+io), state "
         "(candidate/verified/proven), "
         "provenance, tags, score. Empty query lists all.", ACTION_OBSERVE,
         (Arg("query", "s", "words describing the workload or goal"),), roles=_PLAN),
    Tool("GetPolicy", "One policy version with its TOML document and tunable parameters.",
         ACTION_OBSERVE, (Arg("policy_id", "s", "policy id or a unique prefix (8+ hex)"),),
         roles=_PLAN),
    Tool("GetPolicyHistory", "Measured outcomes of a policy version's deployments and the "
         "antipatterns (regressions the circuit breaker recorded).", ACTION_OBSERVE,
         (Arg("policy_id", "s", "policy id or a unique prefix"),), roles=_PLAN),
    Tool("SubmitPolicy", "Store a T1 policy TOML document (one subsystem, or several: "
         "[policy] subsystems) as a candidate; returns its id. The "
         "daemon validates it (allow-listed keys, ranges) and says what is wrong.",
         ACTION_SUBMIT, (Arg("document", "s", "the TOML policy text"),), json_out=(False,),
         roles=_PLAN),
    Tool("VerifyPolicy", "Run the verifier (schema, static scheduling checks, dynamic sandbox "
         "test) on a submitted policy; returns whether it passed and the findings to fix.",
         ACTION_VERIFY, (Arg("policy_id", "s", "policy id"),), out="ss",
         json_out=(False, True), roles=_PLAN, out_names=("token", "report")),
    Tool("GetVerificationReport", "The verification report a token's report_digest names, "
         "exactly as it was signed.", ACTION_OBSERVE,
         (Arg("digest", "s", "the report_digest claim of a token"),)),
    Tool("PlanDeployment", "Dry run: every value a deployment of a verified token would write.",
         ACTION_DEPLOY, (Arg("token", "s", "deployment token from VerifyPolicy"),)),
    Tool("Deploy", "Redeem a token: canary deployment behind the circuit breaker.",
         ACTION_DEPLOY, (Arg("token", "s", "deployment token"),), json_out=(False,)),
    Tool("HoldDeployment", "Tie a running deployment to this connection (rolled back when it "
         "closes).", ACTION_DEPLOY, (Arg("deployment_id", "s", "dep-..."),), out="",
         json_out=()),
    Tool("ReleaseHold", "Release this connection's hold: the deployment stays when the "
         "connection closes.", ACTION_DEPLOY, (Arg("deployment_id", "s", "dep-..."),), out="",
         json_out=()),
    Tool("GetDeployment", "A deployment's state, targets, breaker trip and transitions.",
         ACTION_OBSERVE, (Arg("deployment_id", "s", "dep-..."),)),
    Tool("ListDeployments", "The newest deployments, newest first.", ACTION_OBSERVE),
    Tool("Explain", "Why a process has its scheduling values, or what a deployment did: "
         "every value schedcp wrote, with its policy version, deployment, token (issuer key, "
         "digest), verification report and the circuit breaker's figures; restored values "
         "say from what to what.", ACTION_OBSERVE,
         (Arg("subject", "s", "a running process id (decimal) or a deployment id dep-..."),)),
    Tool("GetFeedback", "Baseline vs. after deltas (median, p10, p90) of a deployment's "
         "targets: run-queue wait, CPU, PSI, context switches.", ACTION_OBSERVE,
         (Arg("deployment_id", "s", "dep-..."),)),
    Tool("GetFeedbackFor", "GetFeedback plus processes the deployment does not target "
         "(a reader an io policy protects by lowering a writer).", ACTION_OBSERVE,
         (Arg("deployment_id", "s", "dep-..."),
          Arg("pids", "s", "comma-separated process ids, at most 64"))),
    Tool("Rollback", "Restore everything a deployment changed and end it.", ACTION_DEPLOY,
         (Arg("deployment_id", "s", "dep-..."),)),
    Tool("RecordVerdict", "Record the owner's verdict on its deployment in the policy's "
         "history: a JSON object {verdict: improved|no-gain|worse, metric, change (relative, "
         "after vs. before), p_value, note}. 'worse' also records an antipattern for the "
         "policy's profile; later runs reuse a version only when its last verdict is "
         "'improved'.", ACTION_DEPLOY,
         (Arg("deployment_id", "s", "dep-..."),
          Arg("verdict", "s", "the verdict as JSON text, at most 4096 bytes"))),
    Tool("GetStatus", "Daemon status: version, subsystems, authorization mode, the caller.",
         ACTION_OBSERVE),
)

BY_NAME: dict[str, Tool] = {t.name: t for t in TOOLS}


def tool(name: str) -> Tool:
    """The declared tool ``name`` (KeyError for an undeclared one)."""
    return BY_NAME[name]


def claude_tools(role: str, cache: bool = True) -> list[dict[str, Any]]:
    """Anthropic tool definitions for the tools of ``role``; the last carries cache_control.

    The tool list is fixed for a role, so marking its end as a cache breakpoint
    lets the API reuse the prefix (system prompt + tools) across turns.
    """
    out = [{"name": t.name, "description": t.description, "input_schema": t.schema()}
           for t in TOOLS if role in t.roles]
    if cache and out:
        out[-1]["cache_control"] = {"type": "ephemeral"}
    return out


def check_arguments(t: Tool, args: Any) -> list[Any]:
    """Check ``args`` (a model's tool input) against the declaration; return the D-Bus body.

    Raises ``ValueError`` with a message meant for the model when the input
    is not an object, misses or adds keys, or has a value of the wrong type
    or out of range.
    """
    if not isinstance(args, dict):
        raise ValueError(f"{t.name} takes a JSON object, got {type(args).__name__}")
    extra = sorted(set(args) - {a.name for a in t.args})
    if extra:
        raise ValueError(f"{t.name}: unknown argument(s) {extra}; "
                         f"expected {[a.name for a in t.args]}")
    body: list[Any] = []
    for a in t.args:
        if a.name not in args:
            raise ValueError(f"{t.name}: missing required argument {a.name!r} ({a.description})")
        value = args[a.name]
        kind = _JSON_TYPES[a.dbus]
        if kind == "string" and not isinstance(value, str):
            raise ValueError(f"{t.name}: {a.name} must be a string")
        if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{t.name}: {a.name} must be an integer")
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value):
                raise ValueError(f"{t.name}: {a.name} must be a finite number")
            value = float(value)
        if a.enum and value not in a.enum:
            raise ValueError(f"{t.name}: {a.name} must be one of {list(a.enum)}")
        if a.minimum is not None and value < a.minimum:
            raise ValueError(f"{t.name}: {a.name} must be >= {a.minimum}")
        if a.maximum is not None and value > a.maximum:
            raise ValueError(f"{t.name}: {a.name} must be <= {a.maximum}")
        body.append(value)
    return body
