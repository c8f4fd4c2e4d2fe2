"""Planning role: from a profile to a concrete policy bound to the targets.

Decision ladder, cheapest first:

1. **reuse** — a policy the agent already proved on the same profile
   (``profile:<goal>.<shape>`` tag, state ``proven``, its last judged
   outcome ``active``, no antipattern, and the agent's latest verdict on it,
   if any, ``improved``: :func:`reuse_check`): bind it to today's pids.  No
   model call, whatever the backend.
2. **configure** — a repository policy made for this kind of workload,
   found with ``ListPolicies``, its groups bound to the targets and its
   parameters chosen.
3. **patch** — the same with changes the policy's author did not foresee
   (a group dropped or widened, a knob changed to fix a verifier finding).
4. **compose** — a new document from primitives when nothing fits.
5. **synthesize** — a new sched_ext scheduler in the scheduler language
   (T2 only, :mod:`schedcp_agent.synth`): derived by rules offline, written
   and revised by the model with the Claude backend.

Bases with an antipattern recorded for the same profile are avoided.
Backends (:mod:`schedcp_agent.offline`, :mod:`schedcp_agent.claude`)
produce :class:`Candidate` objects one at a time (``next_candidate``), so
the learning role can ask for the next one with what it learned.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from schedcp_agent import document
from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.observe import WorkloadProfile

_LOGGER = logging.getLogger(__name__)

RUNGS = ("reuse", "configure", "patch", "compose", "synthesize")


@dataclass
class Candidate:
    """A policy to try: the TOML text, where it came from and why."""

    base: str
    rung: str
    text: str
    reasoning: str
    source_id: str = ""
    policy_id: str = ""
    token: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form without the token (single-use, bound to this caller)."""
        out = asdict(self)
        out.pop("token")
        return out


@dataclass
class Attempt:
    """What happened to one candidate (the learning role's memory)."""

    candidate: Candidate
    outcome: str
    detail: str = ""
    deployment: str = ""
    feedback: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    """The deployment's final state and reason (the breaker's trip, if any)."""


class Planner(Protocol):
    """A planning backend."""

    name: str

    async def next_candidate(self, profile: WorkloadProfile,
                             attempts: list[Attempt]) -> Candidate | None:
        """The next policy to try, or None when nothing is left."""


def bindings_for(profile: WorkloadProfile) -> dict[str, list[int]]:
    """Group name -> pids.  A job pool's driver joins the short jobs' group.

    The driver forks the jobs still to come; in the short group (with
    descendants) every new job starts with the short jobs' settings, while the
    long job, matched by the earlier group, keeps its own.
    """
    out = {k: list(v) for k, v in profile.roles.items()}
    if "driver" in out:
        out["short"] = sorted(set(out.get("short", [])) | set(out.pop("driver")))
    # The same targets under the group names the io and multi-subsystem
    # policies use: an I/O-bound set is io-batch-copy's "copy"; the latency
    # targets of a CPU+I/O profile are the database policy's "database" and
    # latency-protect's "latency".
    if "io" in out:
        out.setdefault("copy", out["io"])
    if "database" in out:
        out.setdefault("latency", out["database"])
    return out


def descendant_groups(profile: WorkloadProfile) -> dict[str, bool]:
    """Which groups must cover children forked later (trees) and which must not."""
    tree = profile.shape in ("fork-churn", "long-tail-batch", "job-batch")
    drivers = set(profile.trees)
    return {g: tree or bool(drivers & set(profile.roles.get(g, [])))
            for g in ("build", "short", "batch", "latency", "long", "foreground", "all")}


class RepositoryView:
    """The repository as the planner reads it (ListPolicies, GetPolicy, GetPolicyHistory)."""

    def __init__(self, client: SchedcpClient) -> None:
        self.client = client
        self._docs: dict[str, dict[str, Any]] = {}

    async def search(self, query: str) -> list[dict[str, Any]]:
        """Ranked live policies for ``query``."""
        return list(await self.client.call("ListPolicies", query))

    async def get(self, policy_id: str) -> dict[str, Any]:
        """One version with its document."""
        if policy_id not in self._docs:
            self._docs[policy_id] = await self.client.call("GetPolicy", policy_id)
        return self._docs[policy_id]

    async def history(self, policy_id: str) -> dict[str, Any]:
        """Outcomes and antipatterns of one version."""
        return dict(await self.client.call("GetPolicyHistory", policy_id))

    async def by_name(self, name: str) -> dict[str, Any] | None:
        """The live version of a policy named ``name`` (the newest), or None."""
        hits = [p for p in await self.search(name.replace("-", " ")) if p["name"] == name]
        if not hits:
            return None
        return max(hits, key=lambda p: p.get("updated", 0.0))

    async def agent_versions(self, profile: WorkloadProfile) -> list[dict[str, Any]]:
        """The agent's versions tagged with this profile, newest first."""
        query = f"agent {profile.shape.replace('-', ' ')} {profile.goal}"
        tag = f"profile:{profile.key}"
        found = [p for p in await self.search(query) if tag in p.get("tags", [])]
        return sorted(found, key=lambda p: p.get("updated", 0.0), reverse=True)

    async def avoided_bases(self, profile: WorkloadProfile) -> dict[str, str]:
        """Bases that regressed on this profile before: name -> what was recorded."""
        out: dict[str, str] = {}
        for p in await self.agent_versions(profile):
            base = next((t[5:] for t in p.get("tags", []) if t.startswith("base:")), "")
            hist = await self.history(p["id"])
            for anti in hist.get("antipatterns", []):
                out.setdefault(base, f"{anti.get('metric')} regressed x{anti.get('regression')}"
                                     f" ({p['name']})")
        return out


VERDICT_PREFIX = "agent:"
"""The daemon's outcome rows of a deployment's owner's verdict (``RecordVerdict``)."""


@dataclass
class ReuseCheck:
    """What a version's history says about reusing it (:func:`reuse_check`)."""

    refused: str
    """Why it must not be reused; "" when it may be."""
    active: int
    """Deployments of it that passed probation (the daemon's ``active``)."""
    verdict: str
    """The agent's latest verdict on it (``improved``, ``no-gain``, ``worse``), or ""."""


def reuse_check(hist: dict[str, Any], deployed: bool = True) -> ReuseCheck:
    """The one rule for reusing one of the agent's versions on the profile it was tagged for.

    - No antipattern: a breaker trip, or an agent's ``worse`` verdict.
    - The daemon's judged outcomes — leaving out rollbacks (asked for, or a
      holder leaving: they say nothing about the policy) and the agent's
      verdicts — must end with ``active``; with ``deployed=False`` (a T2
      program that may only have passed verification) they may also be
      empty.
    - The agent's latest verdict (``agent:<verdict>`` rows, recorded with
      ``RecordVerdict`` before it rolls back), if there is one, must be
      ``improved``.  ``active`` only says the deployment was safe; a version
      the agent itself rolled back as no gain (or worse) is not proven for
      this profile.  A version without any verdict (deployed by hand, or by
      an agent older than ``RecordVerdict``) keeps the daemon-only rule.
    """
    outcomes = hist.get("outcomes", [])
    verdicts = [str(o["outcome"])[len(VERDICT_PREFIX):] for o in outcomes
                if str(o.get("outcome", "")).startswith(VERDICT_PREFIX)]
    judged = [o for o in outcomes if o.get("outcome") != "rolled-back"
              and not str(o.get("outcome", "")).startswith(VERDICT_PREFIX)]
    active = sum(o.get("outcome") == "active" for o in judged)
    verdict = verdicts[-1] if verdicts else ""
    refused = ""
    if hist.get("antipatterns"):
        refused = "an antipattern is recorded on it"
    elif judged and judged[-1].get("outcome") != "active":
        refused = f"its last judged deployment was {judged[-1].get('outcome')}"
    elif not judged and deployed:
        refused = "no deployment of it became active"
    elif verdict and verdict != "improved":
        refused = f"the agent's last verdict on it was {verdict}"
    return ReuseCheck(refused, active, verdict)


async def repository_hit(repo: RepositoryView, profile: WorkloadProfile) -> Candidate | None:
    """A policy proven on the same profile, re-bound to today's targets; or None.

    Proven: state ``proven`` and :func:`reuse_check` passes (last judged
    outcome ``active``, no antipattern, and the agent's latest verdict, if
    any, ``improved``).
    """
    for p in await repo.agent_versions(profile):
        if p.get("state") != "proven":
            continue
        check = reuse_check(await repo.history(p["id"]))
        if check.refused:
            _LOGGER.info("not reusing %s (%s): %s", p["name"], p["id"][:12], check.refused)
            continue
        full = await repo.get(p["id"])
        base = next((t[5:] for t in p.get("tags", []) if t.startswith("base:")), p["name"])
        doc = tomllib.loads(full["document"])
        if not document.has_groups(doc):
            continue
        bound = document.retarget(doc, bindings_for(profile), base_name=base,
                                  profile_key=profile.key, profile_text=profile.text,
                                  goal=profile.goal,
                                  descendants=descendant_groups(profile),
                                  devices=profile.io_devices)
        if not document.has_groups(bound):
            continue
        judged = ("the agent's last verdict was improved" if check.verdict else
                  "no agent verdict recorded (deployed before verdicts were)")
        return Candidate(base, "reuse", document.dump(bound),
                         f"repository hit: {p['name']} ({p['id'][:12]}) was proven on the "
                         f"same profile ({profile.key}): {check.active} active "
                         f"deployment(s), {judged}, no antipattern; re-bound to today's "
                         f"targets",
                         source_id=p["id"])
    return None


async def configure(repo: RepositoryView, profile: WorkloadProfile, base_name: str,
                    why: str, settings: dict[str, Any] | None = None) -> Candidate | None:
    """Rung 2/3: the repository policy ``base_name`` bound to the profile's targets."""
    try:
        found = await repo.by_name(base_name)
    except DaemonError as err:
        _LOGGER.warning("ListPolicies failed: %s", err)
        return None
    if found is None:
        return None
    full = await repo.get(found["id"])
    base = tomllib.loads(full["document"])
    if not document.has_groups(base):
        _LOGGER.info("skipping %s: it has no [[group]]s to bind to the targets (track %s)",
                     base_name, base.get("policy", {}).get("track", "T1"))
        return None
    bindings = bindings_for(profile)
    bound = document.retarget(base, bindings, base_name=base_name, profile_key=profile.key,
                              profile_text=profile.text, goal=profile.goal, settings=settings,
                              descendants=descendant_groups(profile),
                              devices=profile.io_devices)
    if not document.has_groups(bound):
        return None
    kept = {name for name, _g in document.groups(bound)}
    dropped = [name for name, _g in document.groups(base) if name not in kept]
    notes = [f"group {d!r} dropped: no such processes among the targets" +
             (" (its competitors are outside the scope: see the advice)"
              if d == "batch" and profile.competitors and not profile.may_act_on_neighbours
              else "") for d in dropped]
    notes += _device_notes(base, bound)
    rung = "patch" if notes or "driver" in profile.roles else "configure"
    if "driver" in profile.roles:
        notes.append("the job pool's driver joins 'short' so jobs it starts later get it")
    for name, value in (settings or {}).items():
        notes.append(f"{name} = {value}")
    return Candidate(base_name, rung, document.dump(bound), why, source_id=found["id"],
                     notes=notes)


def _device_notes(base: dict[str, Any], bound: dict[str, Any]) -> list[str]:
    """What happened to the base's machine-wide device tables (io ``[[device]]``)."""
    before, after = document.devices_of(base), document.devices_of(bound)
    if not before or before == after:
        return []
    if not after:
        return [f"[[device]] table(s) for {before} dropped: device queue settings are "
                f"machine-wide and no --io-device allows the agent to change one; only the "
                f"targets' own I/O priority is set"]
    return [f"[[device]] table re-aimed from {before} to {after} (--io-device)"]


def compose(profile: WorkloadProfile) -> Candidate | None:
    """Rung 4: a new T1 policy from primitives, one group per role."""
    knobs: dict[str, dict[str, Any]] = {
        "latency": {"task": {"timer_slack_ns": 1}},
        "foreground": {"task": {"slice_us": 1000}},
        "batch": {"task": {"policy": "batch", "nice": 10}},
        "build": {"task": {"policy": "batch"}},
        "long": {"cgroup": {"shares": 4096}},
        "short": {"cgroup": {"shares": 1024}},
        "all": {"cgroup": {"shares": 1024}},
    }
    groups = []
    for role, pids in bindings_for(profile).items():
        if pids and role in knobs:
            groups.append({"name": role, "match": {"pid": sorted(pids)}, **knobs[role]})
    if not groups:
        return None
    doc = {"policy": {"name": "composed", "description": "composed by schedcp-agent"},
           "group": groups}
    bound = document.retarget(doc, bindings_for(profile), base_name="composed",
                              profile_key=profile.key, profile_text=profile.text,
                              goal=profile.goal, descendants=descendant_groups(profile))
    return Candidate("composed", "compose", document.dump(bound),
                     "no repository policy fits (or each regressed here): composed one group "
                     "per role from primitives (batch/nice for CPU hogs, timer slack for "
                     "latency tasks, cpu.shares for job sets)")
