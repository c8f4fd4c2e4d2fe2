"""The arms compared on a running workload: kernel defaults, a built-in policy, the agent.

- ``default``: nothing deployed (the kernel's defaults).
- ``policy:<name>``: a built-in policy of the daemon's repository, its groups
  bound to the session's roles by group name (``match = { pid = [...] }``,
  ``pids`` in io groups; every part of a multi-subsystem policy; io
  ``[[device]]`` tables aimed at the session's own loop device;
  descendants stay covered, the policies' default), submitted once; before
  each of its windows it is verified for a fresh token, deployed, and waited
  on until active; after the window it is rolled back.  A policy with a group
  the workload has no role for does not apply to it.
- ``agent``: ``schedcp-agent optimize --match <session.match> --goal <goal>
  --json`` once per workload on the running session (offline planner, or
  Claude with ``--agent-backend claude``).  Its choice, cost and wall time
  are recorded.  The deployment it keeps serves its first window; later
  windows re-verify and redeploy the same policy version.  When it kept
  nothing (no candidate met the goal), its windows run with nothing deployed:
  that was its choice.

Every deployment goes through schedcpd's D-Bus API exactly as an agent's
would (SubmitPolicy, VerifyPolicy, Deploy, GetDeployment, Rollback).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import sys
import time
import tomllib
import weakref
from dataclasses import dataclass, field
from typing import Any

from schedcp_agent import document
from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_bench.workload import Session, Workload

_LOGGER = logging.getLogger(__name__)

DEPLOY_TIMEOUT = 60.0
BACKOFF = 1.5
"""Seconds before deploying again after a trip (the bench daemon backs off 1 s)."""


class ArmError(Exception):
    """An arm could not do its part (verification refused, deployment failed, agent error)."""


@dataclass
class AgentSettings:
    """How the agent arm runs ``schedcp-agent``."""

    backend: str = "offline"
    observe_seconds: float = 3.0
    max_iterations: int = 2
    budget: dict[str, float] = field(default_factory=dict)
    timeout: float = 300.0


@dataclass
class ArmContext:
    """What an arm needs: the daemon connection and the running workload."""

    client: SchedcpClient
    bus: str
    workload: Workload
    session: Session
    agent: AgentSettings = field(default_factory=AgentSettings)


#: every built-in seen per client: ListPolicies("") returns the first 20 policies by
#: name, so once a run has submitted enough bound ("bench-…") and agent ("agent-…")
#: policies, which sort first, the built-ins drop out of the listing
_SEEN: weakref.WeakKeyDictionary[SchedcpClient, dict[str, dict[str, Any]]] = \
    weakref.WeakKeyDictionary()


async def builtin_policies(client: SchedcpClient) -> dict[str, dict[str, Any]]:
    """The daemon's built-in policies by name (the newest live version of each).

    Those listed once on this client are remembered: a later listing may omit
    them (see ``_SEEN``), though the daemon still has them.
    """
    out = _SEEN.setdefault(client, {})
    for p in await client.call("ListPolicies", ""):
        if p.get("provenance") == "builtin":
            if p["name"] not in out or p.get("updated", 0) > out[p["name"]].get("updated", 0):
                out[p["name"]] = p
    return dict(out)


def bind(doc: dict[str, Any], roles: dict[str, list[int]], name: str,
         role_match: dict[str, dict[str, Any]] | None = None,
         devices: list[str] | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """``doc`` with each group selecting the processes of the role of its name.

    Every part of a multi-subsystem policy is bound, each group by its
    subsystem's pid selector (``pid`` for the scheduler, ``pids`` for io).
    A scheduler group whose role is in ``role_match`` (processes born and
    gone within a unit) is selected by that match table, any other by the
    pids in ``roles``.  An io part's ``[[device]]`` tables are aimed at
    ``devices`` (the workload's own loop device); a policy with device tables
    does not apply to a workload without one.  Returns (bound document, [])
    or (None, the groups without processes).
    """
    out = copy.deepcopy(doc)
    unbound = []
    for sub, _prefix, part in document.parts(out):
        key = document.MATCH_KEY.get(sub, "pid")
        for g in part.get("group", []):
            group = g.get("name", "")
            if role_match and group in role_match and sub == "scheduler":
                g["match"] = dict(role_match[group])
                continue
            pids = sorted(set(roles.get(group, [])))
            if not pids:
                unbound.append(str(g.get("name")))
            g["match"] = {key: pids}
        table = document.DEVICE_TABLES.get(sub)
        if table and part.get(table):
            if not devices:
                unbound.append(f"[[{table}]] (the workload has no device of its own)")
            else:
                part[table] = [{**part[table][0], "name": dev} for dev in devices]
    if unbound or not document.has_groups(out):
        return None, unbound
    meta = out.setdefault("policy", {})
    base = meta.get("name", "policy")
    meta["name"] = f"bench-{name}-{base}"[:60]
    meta["tags"] = [*[t for t in meta.get("tags", []) if t != "bench"], "bench", f"base:{base}"]
    out.pop("parameters", None)  # the defaults are what a built-in arm measures
    return {"policy": out.pop("policy"), **out}, []


async def deploy_verified(client: SchedcpClient, policy_id: str,
                          tries: int = 2) -> tuple[str, dict[str, Any]]:
    """Verify ``policy_id`` for a token, deploy it, wait until active; (deployment, record).

    A deployment the circuit breaker reverted during probation is tried once
    more (on a shared host a foreign burst can trip it); the record lists it.
    """
    t0 = time.monotonic()
    tripped: list[str] = []
    for _ in range(tries):
        dep, info = await _deploy_once(client, policy_id)
        if info["state"] == "active":
            return dep, {"deployment": dep, "state": "active", "tripped_before": tripped,
                         "seconds": round(time.monotonic() - t0, 2)}
        tripped.append(f"{dep}: {info.get('reason')}")
        await asyncio.sleep(BACKOFF)
    raise ArmError(f"deployment reverted {len(tripped)} times: {'; '.join(tripped)}")


async def _deploy_once(client: SchedcpClient, policy_id: str) -> tuple[str, dict[str, Any]]:
    token, report = "", {}
    for attempt in range(2):
        token, report = await client.call("VerifyPolicy", policy_id)
        if token:
            break
        failed = {s.get("stage") for s in report.get("stages", [])
                  if not s.get("passed") and not s.get("skipped")}
        if failed != {"dynamic"} or attempt:
            findings = [f"{f.get('code')}: {f.get('message')}"
                        for s in report.get("stages", []) for f in s.get("findings", [])]
            raise ArmError(f"verifier refused {policy_id[:12]}: {'; '.join(findings)[:400]}")
        # the dynamic test measures on a shared host: one retry, as the agent does
    dep = str(await client.call("Deploy", token))
    deadline = time.monotonic() + DEPLOY_TIMEOUT
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = dict(await client.call("GetDeployment", dep))
        if info["state"] == "active":
            return dep, info
        if info["state"] == "reverted" and "circuit breaker" in str(info.get("reason")):
            return dep, info
        if info["state"] in ("reverted", "failed"):
            raise ArmError(f"deployment {dep} {info['state']}: {info.get('reason')}")
        await asyncio.sleep(0.1)
    await rollback(client, dep)
    raise ArmError(f"deployment {dep} not active within {DEPLOY_TIMEOUT:.0f} s "
                   f"(state {info.get('state')})")


async def rollback(client: SchedcpClient, dep: str) -> dict[str, Any]:
    """Roll ``dep`` back; a deployment that already ended is fine."""
    try:
        out = await client.call("Rollback", dep)
        return {"deployment": dep, "rolled_back": True,
                "summary": ((out or {}).get("restore") or {}).get("summary")}
    except DaemonError as err:
        if err.short in ("Conflict", "NotFound"):
            return {"deployment": dep, "rolled_back": False, "note": err.message}
        raise


async def deployment_state(client: SchedcpClient, dep: str) -> str:
    """The deployment's state now (``unknown`` if the daemon does not know it)."""
    try:
        return str((await client.call("GetDeployment", dep))["state"])
    except DaemonError:
        return "unknown"


async def deployment_info(client: SchedcpClient, dep: str) -> dict[str, Any]:
    """The deployment's state and reason now (what a window ended with)."""
    try:
        info = await client.call("GetDeployment", dep)
    except DaemonError as err:
        return {"state": "unknown", "reason": err.message}
    return {"state": info.get("state"), "reason": info.get("reason")}


class Arm:
    """Base: nothing deployed."""

    kind = "default"

    def __init__(self, name: str) -> None:
        self.name = name
        self.deployment: str | None = None
        self.info: dict[str, Any] = {}

    async def setup(self, ctx: ArmContext) -> str | None:
        """Get ready for this workload; return why the arm does not apply, or None."""
        return None

    async def activate(self, ctx: ArmContext) -> dict[str, Any]:
        """Before one of its windows: deploy; return what was done."""
        return {}

    async def _live_or_deploy(self, ctx: ArmContext, policy_id: str) -> dict[str, Any]:
        """Keep a live deployment (the previous window was this arm's), else deploy anew."""
        if self.deployment and await deployment_state(ctx.client, self.deployment) == "active":
            return {"deployment": self.deployment, "state": "active", "reused": True}
        self.deployment, record = await deploy_verified(ctx.client, policy_id)
        return record

    async def deactivate(self, ctx: ArmContext) -> dict[str, Any] | None:
        """After one of its windows (or before another arm's): roll back what is deployed."""
        if self.deployment is None:
            return None
        dep, self.deployment = self.deployment, None
        return await rollback(ctx.client, dep)


class PolicyArm(Arm):
    """A built-in policy of the repository, bound to the session's roles."""

    kind = "policy"

    def __init__(self, name: str, policy: str) -> None:
        super().__init__(name)
        self.policy = policy
        self.policy_id = ""

    async def setup(self, ctx: ArmContext) -> str | None:
        """Fetch, bind and submit the policy; None when it applies."""
        found = (await builtin_policies(ctx.client)).get(self.policy)
        if found is None:
            raise ArmError(f"no built-in policy named {self.policy!r}")
        full = await ctx.client.call("GetPolicy", found["id"])
        session = ctx.session
        device = session.extra.get("io_device")
        bound, unbound = bind(tomllib.loads(full["document"]), session.roles,
                              ctx.workload.name, session.role_match,
                              [str(device)] if device else None)
        if bound is None:
            roles = sorted({*session.roles, *session.role_match})
            return (f"the workload has no processes for group(s) {', '.join(unbound)} "
                    f"(roles: {', '.join(roles) or 'none'})")
        self.policy_id = str(await ctx.client.call("SubmitPolicy", document.dump(bound)))
        self.info = {"policy": self.policy, "source_id": found["id"],
                     "policy_id": self.policy_id,
                     "groups": {q: next(iter(g["match"].values())) if len(g["match"]) == 1
                                else g["match"] for q, g in document.groups(bound)}}
        return None

    async def activate(self, ctx: ArmContext) -> dict[str, Any]:
        """Verify for a token, deploy, wait until active (or keep the live one)."""
        return await self._live_or_deploy(ctx, self.policy_id)


class AgentArm(Arm):
    """``schedcp-agent optimize`` on the running session; its choice for every window."""

    kind = "agent"

    def __init__(self, name: str = "agent") -> None:
        super().__init__(name)
        self.policy_id = ""

    def command(self, ctx: ArmContext) -> list[str]:
        """The ``schedcp-agent optimize`` command line for this session."""
        s = ctx.agent
        argv = [sys.executable, "-m", "schedcp_agent", "optimize", "--bus", ctx.bus,
                "--match", ctx.session.match, "--goal", ctx.workload.goal,
                "--backend", s.backend, "--observe-seconds", str(s.observe_seconds),
                "--max-iterations", str(s.max_iterations), "--json"]
        if ctx.session.extra.get("io_device"):  # the workload's own loop device
            argv += ["--io-device", str(ctx.session.extra["io_device"])]
        if "usd" in s.budget:
            argv += ["--budget-usd", str(s.budget["usd"])]
        if "tokens" in s.budget:
            argv += ["--budget-tokens", str(int(s.budget["tokens"]))]
        return argv

    async def setup(self, ctx: ArmContext) -> str | None:
        """Run the agent once; record what it chose and what it cost."""
        if not ctx.session.match:
            return "the workload gives no --match regex for its processes"
        argv = self.command(ctx)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ})
        try:
            out, err = await asyncio.wait_for(proc.communicate(), ctx.agent.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ArmError(f"schedcp-agent did not finish within {ctx.agent.timeout:.0f} s") \
                from None
        wall = time.monotonic() - t0
        try:
            report = json.loads(out.decode() or "{}")
        except json.JSONDecodeError:
            report = {}
        if not report:
            raise ArmError(f"schedcp-agent exited {proc.returncode} without a report: "
                           f"{err.decode(errors='replace').strip()[-400:]}")
        kept = report.get("kept_deployment")
        chosen: dict[str, Any] | None = None
        for att in report.get("attempts", []):
            if kept and att["execution"].get("deployment") == kept:
                chosen = att
        if chosen is not None:
            self.policy_id = chosen["execution"]["policy_id"]
            self.deployment = kept
        cost = report.get("cost", {})
        self.info = {
            "command": argv, "exit": proc.returncode, "status": report.get("status"),
            "wall_seconds": round(wall, 2), "backend": ctx.agent.backend,
            "saw": (report.get("saw") or {}).get("text"),
            "shape": (report.get("saw") or {}).get("shape"),
            "choice": None if chosen is None else {
                k: chosen["candidate"].get(k) for k in ("base", "rung", "reasoning")},
            "policy_id": self.policy_id or None,
            "kept_deployment": kept,
            "attempts": [{"base": a["candidate"].get("base"), "rung": a["candidate"].get("rung"),
                          "state": a["execution"].get("state"),
                          "error": a["execution"].get("error") or None,
                          "goal_met": (a.get("verdict") or {}).get("goal_met")}
                         for a in report.get("attempts", [])],
            "cost": {"usd": cost.get("usd", 0.0), "tokens": cost.get("tokens", 0),
                     "model_calls": cost.get("model_calls", 0), "seconds": round(wall, 2)},
            "measured_by_agent": report.get("measured"),
        }
        return None

    async def activate(self, ctx: ArmContext) -> dict[str, Any]:
        """Reuse the agent's live deployment, else re-verify and redeploy its policy."""
        if not self.policy_id:
            return {"note": "the agent kept no deployment: nothing deployed"}
        return await self._live_or_deploy(ctx, self.policy_id)


def make_arm(spec: str) -> Arm:
    """The arm ``spec`` names: ``default``, ``agent`` or ``policy:<name>``."""
    if spec == "default":
        return Arm("default")
    if spec == "agent":
        return AgentArm()
    if spec.startswith("policy:") and spec[7:]:
        return PolicyArm(spec, spec[7:])
    raise ValueError(f"unknown arm {spec!r}: expected default, agent or policy:NAME")
