"""``schedcp-agent tune``: a model-based search over a policy's declared parameter ranges.

The search is optuna's TPE sampler (Tree-structured Parzen Estimator) driven
by ask/tell: the tuner asks for a point, runs it as a real deployment
(:mod:`schedcp_agent.trial`) and tells the measured figure.  Why TPE: the
ranges are few (1-4 numbers), each evaluation costs a deployment (tens of
seconds) and is noisy; TPE needs no gradient and no smooth surface, handles
integer and log-scaled ranges natively, and starts to exploit after a handful
of trials, where a Gaussian-process optimiser would need a kernel fitted to
noise and random search would waste the budget.  optuna is maintained, pure
Python, and its ask/tell interface lets the tuner own the loop (budget,
refusals, interruption) instead of handing it to a callback.

- **Failed trials**: a breaker revert is told as the worst value seen so far
  and marked infeasible (``Trial.set_constraint``, optuna >= 5), so the sampler
  learns to avoid the region; a refusal (verifier, Deploy) is told ``FAIL``
  and recorded with its reason.  Neither ends the search.
- **Budget**: ``trials`` deployments and ``seconds`` of wall time; a trial
  is never started after the time is spent (a running one finishes).
- **Warm start**: versions of earlier runs of the same study (tag
  ``tune:<study>``: base policy, goal, bindings) are read from the
  repository (``ListPolicies`` + ``GetPolicyHistory``) and added to the study
  as finished trials with the figures the daemon recorded.
- **Best**: the best measured point is submitted once more with the tag
  ``tuned`` (and verified, so it carries a token the operator can deploy,
  or deployed with ``deploy_best``); every trial stays a version with its
  outcome in the repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.trial import (
    Goal,
    Parameter,
    TrialResult,
    TrialRunner,
    TuneError,
    bind_groups,
    load_document,
    parameterise,
    parameters_of,
    point_of,
)

_LOGGER = logging.getLogger(__name__)


@dataclass
class TuneOptions:
    """What to tune and how long."""

    policy: str
    """A policy id (or unique prefix), a name (its newest live version), or ``deployed``."""
    goal: str
    bus: str = "system"
    trials: int = 10
    seconds: float = 600.0
    bindings: dict[str, list[int]] = field(default_factory=dict)
    warm_start: bool = True
    seed: int | None = None
    out_dir: Path | None = None
    deploy_best: bool = False
    watch_timeout: float = 120.0
    relative: bool = True
    """Score probation/baseline of each trial (see :class:`schedcp_agent.trial.Goal`)."""
    first_points: list[dict[str, float]] = field(default_factory=list)
    """Points to try right after the default one (an operator's hunches), clipped to range."""


def study_key(base_name: str, goal: Goal, bindings: dict[str, list[int]]) -> str:
    """The identity of "the same study": base policy name, goal and the groups' targets.

    Pids are not stable across runs, so only the bound group names count.
    """
    raw = json.dumps([base_name, str(goal), sorted(bindings)], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class Tuner:
    """One tuning run against schedcpd."""

    def __init__(self, opts: TuneOptions, say: Callable[[str], None]) -> None:
        self.opts = opts
        self.say = say
        self.goal = Goal.parse(opts.goal, opts.relative)
        self.trials: list[TrialResult] = []
        self.history: list[TrialResult] = []
        self.best_version: dict[str, Any] = {}
        self.replaced = ""
        """With ``deployed``: the live deployment the run replaces (rolled back at start)."""

    async def _base(self, client: SchedcpClient) -> dict[str, Any]:
        ref = self.opts.policy
        if ref == "deployed":
            live = [d for d in await client.call("ListDeployments")
                    if d.get("state") in ("canary", "active")]
            if not live:
                raise TuneError("no deployment is live: name the policy to tune")
            ref, self.replaced = str(live[-1]["policy_id"]), str(live[-1]["id"])
        try:
            return dict(await client.call("GetPolicy", ref))
        except DaemonError as err:
            if err.short not in ("NotFound", "InvalidArgument"):
                raise
        hits = [p for p in await client.call("ListPolicies", ref.replace("-", " "))
                if p["name"] == ref]
        if not hits:
            raise TuneError(f"no policy with id or name {ref!r}")
        newest = max(hits, key=lambda p: p.get("created", 0))
        return dict(await client.call("GetPolicy", newest["id"]))

    async def run(self) -> dict[str, Any]:
        """Search until the budget is spent; returns the report."""
        t0 = time.monotonic()
        deadline = t0 + self.opts.seconds
        async with SchedcpClient(self.opts.bus) as client:
            base = await self._base(client)
            doc = bind_groups(load_document(base["document"]), self.opts.bindings)
            if self.goal.group not in {g.get("name") for g in doc.get("group", [])}:
                raise TuneError(f"goal group {self.goal.group!r} is not a group of "
                                f"{base['name']!r}")
            params = parameters_of(doc)
            key = study_key(base["name"], self.goal, self.opts.bindings)
            tags = [f"tune:{key}", f"profile:tune.{self.goal}"]
            self.say(f"tuning {base['name']} ({base['id'][:12]}) for {self.goal} "
                     f"({self.goal.direction}); study {key}; ranges: "
                     + ", ".join(f"{p.name} {p.low:g}..{p.high:g}" for p in params))
            study = _study(self.goal, params, self.opts.seed)
            names = {p.name for p in params}
            for point in self.opts.first_points:
                if set(point) - names:
                    raise TuneError(f"unknown parameter(s) {sorted(set(point) - names)}; "
                                    f"this policy has {sorted(names)}")
                study.enqueue_trial({p.name: p.clip(point.get(p.name, p.default))
                                     for p in params})
            if self.opts.warm_start:
                await self._warm_start(client, study, params, key)
            if self.replaced:
                await self._take_over(client)
            runner = TrialRunner(client, self.goal, self.say, self.opts.watch_timeout)
            await runner.start()
            seen: dict[str, TrialResult] = {r.policy_id: r for r in self.history}
            try:
                await self._loop(study, params, doc, tags, runner, seen, deadline)
            finally:
                await runner.abandon()  # interrupted mid-trial: roll back what we hold
            best = self._best()
            if best is not None:
                await self._promote(client, doc, params, best, tags)
            elif self.replaced:  # nothing measured: put back what was live
                await self._restore(client, base["id"])
        return self.report(base, params, key, time.monotonic() - t0)

    async def _loop(self, study: optuna.Study, params: list[Parameter], doc: dict[str, Any],
                    tags: list[str], runner: TrialRunner, seen: dict[str, TrialResult],
                    deadline: float) -> None:
        for number in range(1, self.opts.trials + 1):
            if time.monotonic() >= deadline:
                self.say(f"time budget spent ({self.opts.seconds:g} s) after "
                         f"{len(self.trials)} trials")
                return
            ot = study.ask()
            point = {p.name: _suggest(ot, p) for p in params}
            text = parameterise(doc, params, point, tags)
            trial = TrialResult(number, point)
            self.say(f"trial {number}: {_fmt(point)}")
            pid_of_text = hashlib.sha256(text.encode()).hexdigest()
            prev = seen.get(pid_of_text)
            if prev is not None and prev.state in ("active", "history", "reverted", "failed"):
                # The same version again (integer ranges): its outcome is known;
                # deploying it twice would measure noise (or meet the breaker's backoff).
                trial.policy_id, trial.state = prev.policy_id, "repeat"
                trial.value, trial.reason = prev.value, (
                    f"same point as trial {prev.number}" if prev.number
                    else "same point as a version measured by an earlier run")
                trial.metrics = {"repeat_of": prev.state}
            else:
                await runner.run(trial, text)
                seen[trial.policy_id] = trial
            self._tell(study, ot, trial)
            self.trials.append(trial)
            score = f" {self.goal.score_name}={trial.value:g}" if trial.value is not None else ""
            self.say(f"trial {number}: {trial.state}{score}"
                     + (f" ({trial.reason})" if trial.reason and trial.state != "active"
                        else "") + f" in {trial.seconds:.1f} s")
        self.say(f"trial budget spent ({self.opts.trials} trials)")

    def _tell(self, study: optuna.Study, ot: optuna.trial.Trial, trial: TrialResult) -> None:
        state = trial.metrics.get("repeat_of", trial.state) if trial.state == "repeat" \
            else trial.state
        if state in ("active", "history") and trial.value is not None:
            ot.set_constraint("breaker", 0.0)
            study.tell(ot, trial.value)
        elif state in ("reverted", "failed"):
            ot.set_constraint("breaker", 1.0)  # infeasible: TPE steers away from it
            study.tell(ot, self._worst())
        else:  # refused, or measured nothing
            study.tell(ot, state=optuna.trial.TrialState.FAIL)

    def _worst(self) -> float:
        values = [t.value for t in self.trials + self.history if t.value is not None]
        if not values:
            return math.inf if self.goal.direction == "minimize" else 0.0
        return max(values) * 2 if self.goal.direction == "minimize" else min(values) / 2

    async def _take_over(self, client: SchedcpClient) -> None:
        """Roll back the live deployment being tuned: trials need its targets free.

        The best point is deployed at the end in its place (``deploy_best``).
        """
        try:
            await client.call("Rollback", self.replaced)
        except DaemonError as err:
            if err.short == "NotOwner":
                raise TuneError(f"deployment {self.replaced} is another user's: tuning it "
                                "would need it rolled back (ask its owner or an admin)") from err
            if err.short != "Conflict":  # Conflict: it ended meanwhile
                raise
        self.say(f"rolled back {self.replaced} for the trials; the best point replaces it "
                 "at the end")

    async def _restore(self, client: SchedcpClient, policy_id: str) -> None:
        try:
            token, _report = await client.call("VerifyPolicy", policy_id)
            dep = await client.call("Deploy", token) if token else ""
        except DaemonError as err:
            dep, token = "", ""
            self.say(f"could not redeploy {policy_id[:12]}: {err.short}: {err.message}")
        self.best_version = {"restored": policy_id, "deployment": dep}
        if dep:
            self.say(f"no trial measured: redeployed the version that was live as {dep}")

    async def _warm_start(self, client: SchedcpClient, study: optuna.Study,
                          params: list[Parameter], key: str) -> None:
        try:
            hits = [p for p in await client.call("ListPolicies", f"tune {key}")]
        except DaemonError as err:
            self.say(f"warm start skipped: {err.short}")
            return
        dists = _distributions(params)
        for hit in hits:
            pol = await client.call("GetPolicy", hit["id"])
            doc = load_document(pol["document"])
            if f"tune:{key}" not in doc.get("policy", {}).get("tags", []) or \
                    "tuned" in doc.get("policy", {}).get("tags", []):
                continue
            point = point_of(doc, params)
            if point is None:
                continue
            history = await client.call("GetPolicyHistory", hit["id"])
            value, metrics = self.goal.measure(history, "")
            if value is None:
                continue
            study.add_trial(optuna.trial.create_trial(
                params=point, distributions=dists, value=value,
                user_attrs={"policy_id": hit["id"]}))
            self.history.append(TrialResult(0, point, hit["id"], "history",
                                            "measured by an earlier run", value=value,
                                            metrics=metrics))
        if self.history:
            self.say(f"warm start: {len(self.history)} measured points from the repository")

    def _best(self) -> TrialResult | None:
        done = [t for t in self.trials + self.history
                if t.state in ("active", "history") and t.value is not None]
        if not done:
            return None
        pick = min if self.goal.direction == "minimize" else max
        return pick(done, key=lambda t: t.value if t.value is not None else math.nan)

    async def _promote(self, client: SchedcpClient, doc: dict[str, Any],
                       params: list[Parameter], best: TrialResult, tags: list[str]) -> None:
        """Submit the best point tagged ``tuned`` and verify it (deploy it if asked)."""
        text = parameterise(doc, params, best.point, [*tags, "tuned"])
        out: dict[str, Any] = {"point": best.point, "value": best.value,
                               "from": best.policy_id}
        try:
            out["policy_id"] = await client.call("SubmitPolicy", text)
            token, _report = await client.call("VerifyPolicy", out["policy_id"])
            out["verified"] = bool(token)
            if token and (self.opts.deploy_best or self.replaced):
                out["deployment"] = await client.call("Deploy", token)
        except DaemonError as err:
            out["error"] = f"{err.method}: {err.short}: {err.message}"
        self.best_version = out
        self.say(f"best {_fmt(best.point)} {self.goal.score_name}={best.value:g}: "
                 f"version {str(out.get('policy_id', '-'))[:12]} tagged tuned"
                 + (f", deployed {out['deployment']}" if "deployment" in out else ""))

    def report(self, base: dict[str, Any], params: list[Parameter], key: str,
               seconds: float) -> dict[str, Any]:
        """The run's report (JSON-ready)."""
        ran = [t for t in self.trials if t.state not in ("repeat",)]
        default = {p.name: p.clip(p.default) for p in params}
        best = self._best()
        return {
            "policy": {"id": base["id"], "name": base["name"]}, "goal": str(self.goal),
            "metric": self.goal.score_name, "direction": self.goal.direction, "study": key,
            "default_point": default, "seconds": round(seconds, 1),
            "trials": [t.as_dict() for t in self.trials],
            "warm_start": [t.as_dict() for t in self.history],
            "counts": {s: sum(t.state == s for t in self.trials)
                       for s in ("active", "reverted", "failed", "refused", "repeat")},
            "seconds_per_trial": round(sum(t.seconds for t in ran) / len(ran), 2) if ran else None,
            "verify_seconds_per_trial": round(sum(t.verify_seconds for t in ran) / len(ran), 2)
            if ran else None,
            "best": best.as_dict() if best else None, "best_version": self.best_version,
            "replaced": self.replaced,
        }


def _study(goal: Goal, params: list[Parameter], seed: int | None) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, 2 * len(params)))
    direction = (optuna.study.StudyDirection.MAXIMIZE if goal.direction == "maximize"
                 else optuna.study.StudyDirection.MINIMIZE)
    study = optuna.create_study(direction=direction, sampler=sampler)
    # The default point first: every run measures the untuned policy too.
    study.enqueue_trial({p.name: p.clip(p.default) for p in params})
    return study


def _distributions(params: list[Parameter]) -> dict[str, optuna.distributions.BaseDistribution]:
    return {p.name: (optuna.distributions.IntDistribution(int(p.low), int(p.high),
                                                          log=_log(p))
                     if p.integer else
                     optuna.distributions.FloatDistribution(p.low, p.high, log=_log(p)))
            for p in params}


def _log(p: Parameter) -> bool:
    """Log scale for ranges spanning more than two decades from a positive floor."""
    return p.low > 0 and p.high / p.low >= 100


def _suggest(ot: optuna.trial.Trial, p: Parameter) -> float | int:
    if p.integer:
        return ot.suggest_int(p.name, int(p.low), int(p.high), log=_log(p))
    return ot.suggest_float(p.name, p.low, p.high, log=_log(p))


def _fmt(point: dict[str, float | int]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in point.items())


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """A PNG of the trials: the measured figure per trial, reverts and refusals marked.

    Needs matplotlib (the ``bench`` extra); raises TuneError without it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise TuneError("the plot needs matplotlib (pip install 'schedcp[bench]')") from err
    fig, ax = plt.subplots(figsize=(7, 3.5))
    marks = {"active": ("o", "tab:blue"), "repeat": ("o", "tab:gray"),
             "reverted": ("x", "tab:red"), "failed": ("x", "tab:red"),
             "refused": ("s", "tab:orange"), "interrupted": ("^", "tab:purple")}
    values = [t["value"] for t in report["trials"] if t["value"] is not None]
    # Trials without a figure (reverts, refusals) are drawn at the worst figure seen.
    worst = (max(values) if report["direction"] == "minimize" else min(values)) \
        if values else 0.0
    for state, (marker, color) in marks.items():
        xs = [t["number"] for t in report["trials"] if t["state"] == state]
        ys = [t["value"] if t["value"] is not None else worst for t in report["trials"]
              if t["state"] == state]
        if xs:
            ax.scatter(xs, ys, marker=marker, color=color, label=state)
    best = report.get("best")
    if best and best.get("value") is not None:
        ax.axhline(best["value"], color="tab:green", linestyle="--", label="best")
    ax.set_xlabel("trial (1: the default point; unmeasured trials at the worst figure)")
    ax.set_ylabel(f"{report['metric']} ({report['direction']})")
    ax.set_title(f"tune {report['policy']['name']} for {report['goal']}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


optuna.logging.set_verbosity(optuna.logging.WARNING)
