"""One tuning trial: a parameter point deployed through every gate of schedcpd.

A trial is an ordinary deployment, made over D-Bus like any other client's:

1. the base policy's document with the point's values written into the
   fields its ``[parameters]`` declare (:func:`parameterise`), tagged so the
   repository finds it again (``tune:<study>``, ``profile:<key>``);
2. ``SubmitPolicy`` (a new version: the id is the SHA-256 of the text),
   ``VerifyPolicy`` (every stage; the token is kept here), ``Deploy(token)``
   and ``HoldDeployment``: if the tuner dies, the daemon rolls the trial back
   as soon as its bus connection closes;
3. ``GetDeployment`` until ``active``, ``reverted`` or ``failed`` (the canary
   and the circuit breaker decide), ``GetFeedback`` (the feedback engine's
   before/after figures of the targets), then ``Rollback``;
4. the measurement is read back from the repository (``GetPolicyHistory``):
   the guard medians the daemon recorded for the version (baseline and
   probation windows, or the breaker's trip).  The agent cannot write
   history, so a measurement it reports is one the daemon took.

A refusal (SubmitPolicy error, verifier findings, Deploy error such as a
backoff ``Conflict``) is a trial with state ``refused`` and its reason; a
breaker revert is a trial with state ``reverted`` and the trip's figures.
"""

from __future__ import annotations

import copy
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from schedcp_agent import document
from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.execute import Executor

FINAL = ("active", "reverted", "failed")


class TuneError(Exception):
    """Bad tuning input: a policy without parameters, an unknown group or metric."""


@dataclass(frozen=True)
class Parameter:
    """One declared ``[parameters.<name>]`` range."""

    name: str
    field: str
    low: float
    high: float
    default: float
    integer: bool

    def clip(self, value: float) -> float | int:
        """``value`` inside the range, as the parameter's type."""
        v = min(max(value, self.low), self.high)
        return round(v) if self.integer else float(v)


def parameters_of(doc: dict[str, Any]) -> list[Parameter]:
    """The tunable ranges a policy declares (numeric ``min``..``max`` with min < max)."""
    out = []
    for name, spec in sorted(doc.get("parameters", {}).items()):
        lo, hi = spec.get("min"), spec.get("max")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (lo, hi)):
            continue
        if lo >= hi:
            continue
        try:
            current = document.get_field(doc, spec["field"])
        except (KeyError, IndexError, TypeError):
            continue
        default = spec.get("default", current)
        integer = all(isinstance(x, int) for x in (lo, hi, current))
        out.append(Parameter(name, spec["field"], lo, hi, default, integer))
    if not out:
        raise TuneError(f"policy {doc.get('policy', {}).get('name')!r} declares no numeric "
                        "[parameters] range to tune")
    return out


def bind_groups(doc: dict[str, Any], bindings: dict[str, list[int]]) -> dict[str, Any]:
    """A copy of ``doc`` whose named groups select exactly the given pids (others unchanged).

    Groups are neither dropped nor reordered, so the ``group[i]`` fields of
    ``[parameters]`` still name the same group.
    """
    out = copy.deepcopy(doc)
    names = {g.get("name") for g in out.get("group", [])}
    unknown = sorted(set(bindings) - names)
    if unknown:
        raise TuneError(f"no group named {', '.join(unknown)} in the policy "
                        f"(groups: {', '.join(sorted(map(str, names)))})")
    for g in out.get("group", []):
        if g.get("name") in bindings:
            g["match"] = {"pid": sorted(set(bindings[g["name"]]))}
    return out


def parameterise(doc: dict[str, Any], params: list[Parameter], point: dict[str, float | int],
                 tags: list[str]) -> str:
    """The TOML text of ``doc`` with ``point`` written into the declared fields."""
    out = copy.deepcopy(doc)
    for p in params:
        document.set_field(out, p.field, point[p.name])
    meta = out.setdefault("policy", {})
    meta["tags"] = [t for t in meta.get("tags", []) if not t.startswith(("tune:", "profile:"))]
    meta["tags"] += tags
    return document.dump(out)


def point_of(doc: dict[str, Any], params: list[Parameter]) -> dict[str, float | int] | None:
    """The point a stored document holds (None if a field is missing or out of range)."""
    point: dict[str, float | int] = {}
    for p in params:
        try:
            value = document.get_field(doc, p.field)
        except (KeyError, IndexError, TypeError):
            return None
        if not isinstance(value, int | float) or not p.low <= value <= p.high:
            return None
        point[p.name] = value
    return point


@dataclass
class TrialResult:
    """Everything one trial did and measured."""

    number: int
    point: dict[str, float | int]
    policy_id: str = ""
    state: str = ""
    """``active`` (measured), ``reverted``/``failed`` (the breaker or a write), ``refused``,
    ``interrupted``, or ``history`` (a warm-start point from the repository)."""
    reason: str = ""
    deployment: str = ""
    value: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    feedback: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    verify_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Goal:
    """What a trial's measurement is: a guard figure of one group, and its direction.

    ``wait:<group>`` is the median run-queue wait per run (µs) of the group's
    tasks (lower is better), ``wait-p90:<group>`` its p90, ``cpu:<group>``
    the group's median CPU share (higher is better); all as the daemon
    recorded them over the probation window.
    """

    kind: str
    group: str
    relative: bool = True
    """Score = probation figure / baseline figure of the same deployment (the baseline is
    the host just before the trial, without it): on a shared host the load drifts between
    trials, and the ratio cancels most of that drift; False scores the probation figure."""

    @classmethod
    def parse(cls, text: str, relative: bool = True) -> Goal:
        """``wait:latency`` -> Goal; TuneError for anything else."""
        kind, _, group = text.partition(":")
        if kind not in _GOAL_KEYS or not group:
            raise TuneError(f"goal {text!r}: expected wait:GROUP, wait-p90:GROUP or cpu:GROUP")
        return cls(kind, group, relative)

    @property
    def direction(self) -> str:
        """``minimize`` or ``maximize``."""
        return "maximize" if self.kind == "cpu" else "minimize"

    @property
    def key(self) -> str:
        """The figure's key in the recorded metrics."""
        return _GOAL_KEYS[self.kind]

    @property
    def score_name(self) -> str:
        """What a trial's value is."""
        return f"{self.key} probation/baseline" if self.relative else self.key

    def __str__(self) -> str:
        return f"{self.kind}:{self.group}"

    def measure(self, history: dict[str, Any], deployment: str) -> tuple[float | None, dict]:
        """The probation figure of ``deployment`` in a version's history, and the figures."""
        for o in history.get("outcomes", []):
            if deployment and o.get("deployment_id") != deployment:
                continue
            metrics = o.get("metrics") or {}
            if o.get("outcome") == "active":
                group = metrics.get(self.group) or {}
                value = (group.get("probation") or {}).get(self.key)
                if not isinstance(value, int | float):
                    return None, metrics
                if not self.relative:
                    return float(value), metrics
                base = (group.get("baseline") or {}).get(self.key)
                if not isinstance(base, int | float) or base <= 0:
                    return None, metrics
                return round(float(value) / float(base), 4), metrics
            if o.get("outcome") == "reverted" and metrics:
                return None, metrics
        return None, {}


_GOAL_KEYS = {"wait": "wait_per_run_us_median", "wait-p90": "wait_per_run_us_p90",
              "cpu": "cpu_share_median"}


class TrialRunner:
    """Runs trials through the daemon, one at a time."""

    def __init__(self, client: SchedcpClient, goal: Goal, say: Callable[[str], None],
                 watch_timeout: float = 120.0) -> None:
        self.client = client
        self.goal = goal
        self.say = say
        self.executor = Executor(client, say, hold=True, watch_timeout=watch_timeout)
        self.live: str = ""
        """The deployment of the trial in progress (rolled back by :meth:`abandon`)."""

    async def start(self) -> None:
        """Subscribe to DeploymentChanged (wakes the wait early)."""
        await self.client.watch_deployments(self.executor.on_signal)

    async def run(self, trial: TrialResult, text: str) -> TrialResult:
        """Submit, verify, deploy, hold, wait, measure, roll back ``text``."""
        t0 = time.monotonic()
        try:
            await self._run(trial, text)
        finally:
            trial.seconds = round(time.monotonic() - t0, 2)
        return trial

    async def _run(self, trial: TrialResult, text: str) -> None:
        try:
            trial.policy_id = await self.client.call("SubmitPolicy", text)
        except DaemonError as err:
            return _refused(trial, f"SubmitPolicy: {err.short}: {err.message}")
        v0 = time.monotonic()
        token, report = await self.client.call("VerifyPolicy", trial.policy_id)
        trial.verify_seconds = round(time.monotonic() - v0, 2)
        if not token:
            errors = [f"{s.get('stage')}: {f.get('code')}: {f.get('message')}"
                      for s in report.get("stages", []) for f in s.get("findings", [])
                      if f.get("severity", "error") == "error"]
            failed = [f"{s.get('stage')} {s.get('verdict')}" for s in report.get("stages", [])
                      if s.get("verdict") not in ("passed", "skipped")]
            return _refused(trial, "VerifyPolicy: " + "; ".join(errors or failed or ["no token"]))
        try:
            trial.deployment = await self.client.call("Deploy", token)
        except DaemonError as err:
            return _refused(trial, f"Deploy: {err.short}: {err.message}")
        self.live = trial.deployment
        self.executor.mine[trial.deployment] = "trial"
        try:
            await self.client.call("HoldDeployment", trial.deployment)
        except DaemonError as err:  # it may have ended already (a fast trip)
            self.say(f"hold of {trial.deployment}: {err.short}")
        info = await self.executor.wait(trial.deployment, FINAL)
        trial.state, trial.reason = str(info["state"]), str(info.get("reason", ""))
        if trial.state not in FINAL:
            trial.reason = f"still {trial.state} after the watch timeout: rolled back"
        if trial.state == "active":
            try:
                trial.feedback = _brief_feedback(
                    await self.client.call("GetFeedback", trial.deployment),
                    info.get("targets", {}).get(self.goal.group, []))
            except DaemonError as err:
                trial.feedback = {"error": f"{err.short}: {err.message}"}
        await self.abandon()
        history = await self.client.call("GetPolicyHistory", trial.policy_id)
        trial.value, trial.metrics = self.goal.measure(history, trial.deployment)
        if trial.state == "reverted" and info.get("trip"):
            trial.metrics = {**trial.metrics, "trip": info["trip"]}
        return None

    async def abandon(self) -> None:
        """Roll back the live trial deployment, if any (Conflict: it ended already)."""
        dep, self.live = self.live, ""
        if dep:
            await self.executor.rollback(dep)


def _refused(trial: TrialResult, reason: str) -> None:
    trial.state, trial.reason = "refused", reason


def _brief_feedback(fb: dict[str, Any], pids: list[int]) -> dict[str, Any]:
    """The feedback engine's figures for the goal group's pids and the system run-queue wait."""
    per = fb.get("pids") or {}
    out: dict[str, Any] = {"pids": {}}
    for pid in pids:
        entry = per.get(str(pid)) or {}
        out["pids"][str(pid)] = {k: {w: (entry.get(k, {}).get(w) or {}).get("median")
                                     for w in ("before", "after")} for k in ("wait", "cpu")}
    rq = (fb.get("metrics") or {}).get("rq_wait") or {}
    out["rq_wait"] = {w: (rq.get(w) or {}).get("median") for w in ("before", "after")}
    return out


def load_document(text: str) -> dict[str, Any]:
    """Parse a stored policy document."""
    return tomllib.loads(text)
