"""Runs workloads: start the session once, alternate arms over repeated windows, summarise.

Per workload: ``prepare`` (cached build), ``start`` with the run's seed, the
workload's warm-up, then each arm's setup (the agent runs here), then
``reps`` repetitions.  A repetition is one window per arm; the order flips
every repetition (``C..B A | A B..C | C..B A``: ABBA, so slow drift of a
shared host hits baseline and candidates alike).  Before each window the
arm's policy is deployed (and waited on until active), the host is checked
for quietness (:mod:`schedcp_bench.quiet`), the window runs for ``window``
seconds (longer when no measured unit completed), the foreign load over the
window is recorded, and a noisy window is run again (up to ``max_reruns``).
After the window the deployment is rolled back.  Whatever happens, the
session is stopped and every deployment made here is rolled back.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_bench import restore_check
from schedcp_bench import score as scoring
from schedcp_bench.arms import (
    AgentArm,
    AgentSettings,
    Arm,
    ArmContext,
    ArmError,
    builtin_policies,
    deployment_info,
    deployment_state,
    make_arm,
    rollback,
)
from schedcp_bench.progress import ProgressBar
from schedcp_bench.quiet import LoadMeter, QuietPolicy, wait_quiet
from schedcp_bench.services import Daemon
from schedcp_bench.workload import Session, Workload, now

_LOGGER = logging.getLogger(__name__)

ALL_POLICIES = "policy:*"
MAX_WINDOW_STRETCH = 4
"""A window with no complete unit is extended, up to this many times its length."""


@dataclass
class RunOptions:
    """How a run goes (the CLI fills it from the suite and the flags)."""

    arms: list[str]
    reps: int = 3
    window: float = 3.0
    seed: int = 1
    out: Path = Path("bench-results")
    quiet: QuietPolicy = field(default_factory=QuietPolicy)
    agent: AgentSettings = field(default_factory=AgentSettings)
    config: scoring.ScoreConfig = field(default_factory=scoring.ScoreConfig)
    cache: Path = Path("/var/tmp/schedcp-bench-cache")




def window_order(arms: list[str], rep: int) -> list[str]:
    """ABBA: even repetitions run the arms backwards (the agent first), odd ones forwards."""
    return list(reversed(arms)) if rep % 2 == 0 else list(arms)


def summarize(windows: list[dict[str, Any]], metric_names: list[str]) -> dict[str, Any]:
    """Median with min-max and the count of windows per metric."""
    out: dict[str, Any] = {}
    for name in metric_names:
        vals = [w["metrics"][name] for w in windows
                if w.get("metrics") and w["metrics"].get(name) is not None]
        out[name] = ({"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                      "n": len(vals)} if vals else
                     {"median": None, "min": None, "max": None, "n": 0})
    return out


def expected_windows(n_arms: int, reps: int) -> int:
    """Windows one workload runs (for the progress bar)."""
    return n_arms * reps


class WorkloadRun:
    """One workload through every arm."""

    def __init__(self, workload: Workload, opts: RunOptions, daemon: Daemon,
                 client: SchedcpClient, arm_specs: list[str], run_dir: Path,
                 progress: ProgressBar) -> None:
        self.wl = workload
        self.opts = opts
        self.daemon = daemon
        self.client = client
        self.arm_specs = arm_specs
        self.run_dir = run_dir
        self.progress = progress
        self.created: set[str] = set()
        self.before: dict[int, restore_check.Thread] = {}
        self.result: dict[str, Any] = {
            "name": workload.name, "description": workload.description,
            "track": workload.track, "goal": workload.goal, "quick": workload.quick,
            "metrics": [m.as_dict() for m in workload.metrics],
            "slos": [{"metric": s.metric, "op": s.op, "value": s.value, "hard": s.hard}
                     for s in workload.slos],
            "status": "ok", "reason": None, "arms": {}, "scores": {},
        }

    async def run(self) -> dict[str, Any]:
        """The workload's result (skipped, error or ok)."""
        t0 = time.monotonic()
        why = self.wl.unavailable()
        if why:
            self.result.update(status="skipped", reason=why)
            self.progress(f"{self.wl.name}: skipped ({why})",
                          expected_windows(len(self.arm_specs), self.opts.reps))
            return self.result
        session: Session | None = None
        arms: list[Arm] = []
        try:
            self.progress(f"{self.wl.name}: prepare", 0)
            self.opts.cache.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self.wl.prepare, self.opts.cache)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            session = self.wl.start(self.run_dir, self.opts.seed)
            self.result["roles"] = session.roles
            self.result["match"] = session.match
            await asyncio.sleep(self.wl.warmup)
            self._check_alive(session)
            self.before = await asyncio.to_thread(
                restore_check.snapshot, [p.pid for p in session.procs])
            arms = await self._setup_arms(session)
            await self._repetitions(session, arms)
        except Exception as exc:  # one workload's failure is its result, not the run's end
            _LOGGER.debug("workload %s failed", self.wl.name, exc_info=True)
            self.result.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                               traceback=traceback.format_exc()[-2000:])
        finally:
            await self._cleanup(arms, session)
            self.result["seconds"] = round(time.monotonic() - t0, 1)
        return self.result

    def _check_alive(self, session: Session) -> None:
        if session.alive():
            return
        log = session.dir / "stderr.log"
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        raise RuntimeError(f"a process of the session exited early: {tail.strip()}")

    def _ctx(self, session: Session) -> ArmContext:
        return ArmContext(self.client, self.daemon.address, self.wl, session, self.opts.agent)

    async def _setup_arms(self, session: Session) -> list[Arm]:
        ready: list[Arm] = []
        for spec in self.arm_specs:
            arm = make_arm(spec)
            entry: dict[str, Any] = {"kind": arm.kind, "status": "ok", "reason": None,
                                     "windows": []}
            self.result["arms"][spec] = entry
            if arm.kind == "agent":
                self.progress(f"{self.wl.name}: agent optimizing", 0)
            try:
                why = await arm.setup(self._ctx(session))
            except (ArmError, DaemonError) as err:
                why = None
                entry.update(status="error", reason=str(err))
            entry["info"] = arm.info
            if isinstance(arm, AgentArm):
                self.created.update(a for a in [arm.info.get("kept_deployment")] if a)
            if why:
                entry.update(status="not applicable", reason=why)
            if entry["status"] == "ok":
                ready.append(arm)
            else:
                self.progress(f"{self.wl.name}: {spec} {entry['status']}", self.opts.reps)
                await arm.deactivate(self._ctx(session))
        return ready

    async def _repetitions(self, session: Session, arms: list[Arm]) -> None:
        by_name = {a.name: a for a in arms}
        names = [a.name for a in arms]
        schedule = [(rep, pos, name) for rep in range(self.opts.reps)
                    for pos, name in enumerate(window_order(names, rep))]
        for i, (rep, position, name) in enumerate(schedule):
            arm = by_name[name]
            keep = i + 1 < len(schedule) and schedule[i + 1][2] == name
            self.progress(f"{self.wl.name}: rep {rep + 1} {name}", 0)
            record = await self._window(session, arm, by_name, rep, position, keep)
            self.result["arms"][name]["windows"].append(record)
            self.progress(f"{self.wl.name}: rep {rep + 1} {name}", 1)
            self._check_alive(session)
        metric_names = [m.name for m in self.wl.metrics]
        for entry in self.result["arms"].values():
            entry["summary"] = summarize(entry["windows"], metric_names)
            fl = [w["foreign_during"]["foreign_cpus"] for w in entry["windows"]
                  if w.get("foreign_during")]
            entry["foreign_cpus_median"] = statistics.median(fl) if fl else None
        self._score()

    async def _window(self, session: Session, arm: Arm, arms: dict[str, Arm], rep: int,
                      position: int, keep: bool = False) -> dict[str, Any]:
        """One measured window of ``arm``; ``keep``: the next window is this arm's too,
        so its deployment stays live (ABBA's middle pair) instead of a rollback and
        a redeploy."""
        ctx = self._ctx(session)
        record: dict[str, Any] = {"rep": rep, "position": position}
        for other in arms.values():  # only this arm's policy may be live
            if other is not arm and other.deployment:
                await other.deactivate(ctx)
        try:
            record["deploy"] = await arm.activate(ctx)
        except (ArmError, DaemonError) as err:
            record["error"] = f"deploy: {err}"
            return record
        if arm.deployment:
            self.created.add(arm.deployment)
        own = [*(p.pid for p in session.procs), *self.daemon.own_pids]
        try:
            for attempt in range(self.opts.quiet.max_reruns + 1):
                before: dict[str, Any] | None = None
                waited = 0.0
                if self.opts.quiet.remaining() > 0:  # spent: no wait, the window's own figure
                    sample, waited = await asyncio.to_thread(wait_quiet, self.opts.quiet, own)
                    before = sample.as_dict()
                meter = LoadMeter(own)
                meter.start()
                t0 = now()
                length = max(self.opts.window, float(self.wl.min_window))
                await asyncio.sleep(length)
                metrics = self.wl.measure(session, t0, now())
                stretch = 1
                while all(v is None for v in metrics.values()) and stretch < MAX_WINDOW_STRETCH:
                    await asyncio.sleep(length)
                    stretch += 1
                    metrics = self.wl.measure(session, t0, now())
                t1 = now()
                during = meter.stop()
                record.update(t0=t0, t1=t1, seconds=round(t1 - t0, 3), metrics=metrics,
                              foreign_before=before, waited=round(waited, 2),
                              foreign_during=during.as_dict(), reruns=attempt,
                              noisy=self.opts.quiet.noisy(during))
                if not record["noisy"] or self.opts.quiet.remaining() <= 0:
                    break
                self.opts.quiet.spent += record["seconds"]  # a rerun costs the noise budget
            if arm.deployment:
                record["deployment_after"] = await deployment_info(self.client, arm.deployment)
        finally:
            if arm.deployment and not keep:
                record["rollback"] = await arm.deactivate(ctx)
                if record["rollback"] is not None:  # rolled back now, or ended before
                    record["not_restored"] = await asyncio.to_thread(
                        restore_check.differences, self.before)
            elif arm.deployment:
                record["rollback"] = {"deployment": arm.deployment, "kept_for_next_window": True}
        return record

    def _score(self) -> None:
        score_workload(self.result, self.opts.config)

    async def _cleanup(self, arms: list[Arm], session: Session | None) -> None:
        if session is not None:
            ctx = self._ctx(session)
            for arm in arms:
                try:
                    await arm.deactivate(ctx)
                except (ArmError, DaemonError, OSError) as err:
                    _LOGGER.warning("rollback of %s failed: %s", arm.name, err)
            await asyncio.to_thread(session.stop)
        left = []
        for dep in sorted(self.created):
            state = await deployment_state(self.client, dep)
            if state not in ("reverted", "failed", "unknown"):
                await rollback(self.client, dep)
                left.append({"deployment": dep, "state": state})
        self.result["rolled_back_at_cleanup"] = left


def score_workload(result: dict[str, Any], cfg: scoring.ScoreConfig) -> None:
    """Fill ``result["scores"]`` (one term per applicable arm) and ``not_applicable``.

    An arm whose setup said it does not apply gets no term: it is listed in
    ``result["not_applicable"]`` with its reason, not scored as missed SLOs.
    """
    base = result["arms"].get(cfg.baseline)
    if not base or "summary" not in base:
        return
    med = {k: v["median"] for k, v in base["summary"].items()}
    for name, entry in result["arms"].items():
        if entry.get("status") == "not applicable":
            result.setdefault("not_applicable", {})[name] = entry.get("reason")
            continue
        if "summary" not in entry:
            continue
        cand = {k: v["median"] for k, v in entry["summary"].items()}
        result["scores"][name] = scoring.workload_score(
            result["name"], result["metrics"], result["slos"], med, cand, cfg)


async def resolve_arms(specs: list[str], client: SchedcpClient) -> list[str]:
    """Expand ``policy:*`` into every built-in policy; check named policies exist."""
    builtin = await builtin_policies(client)
    out: list[str] = []
    for spec in specs:
        if spec == ALL_POLICIES:
            out += [f"policy:{n}" for n in sorted(builtin)
                    if builtin[n].get("track", "T1") == "T1"]
        elif spec.startswith("policy:") and spec[7:] not in builtin:
            known = ", ".join(sorted(builtin)) or (
                "none: the daemon loaded no built-in policies; they come from the checkout's "
                "policies/ or /usr/share/schedcp/policies (the Debian package)")
            raise ValueError(f"arm {spec}: no built-in policy named {spec[7:]!r} (known: {known})")
        else:
            make_arm(spec)  # validates
            out.append(spec)
    return list(dict.fromkeys(out))


async def run_all(workloads: list[Workload], opts: RunOptions, daemon: Daemon,
                  progress: ProgressBar) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Every workload in order; (workload results, arm scores, resolved arm names)."""
    async with SchedcpClient(daemon.address) as client:
        arm_specs = await resolve_arms(opts.arms, client)
        progress.set_total(len(workloads) * expected_windows(len(arm_specs), opts.reps))
        if daemon.kind != "private":
            try:
                pid = int((await client.call("GetStatus"))["pid"])
                daemon.own_pids.append(pid)
            except (DaemonError, KeyError, ValueError):
                pass
        results = []
        for i, wl in enumerate(workloads):
            run_dir = opts.out / "runs" / f"{i:02d}-{wl.name}"
            results.append(await WorkloadRun(wl, opts, daemon, client, arm_specs, run_dir,
                                             progress).run())
    return results, arm_scores(results, arm_specs, opts.config), arm_specs


def arm_scores(results: list[dict[str, Any]], arm_specs: list[str],
               cfg: scoring.ScoreConfig) -> dict[str, Any]:
    """Each arm's total Score over the workloads it ran on.

    A workload where the arm was not applicable has no term in its sum; it is
    counted in ``not_applicable``, and ``baseline_same`` is the baseline's sum
    over the workloads the arm was scored on (the like-for-like reference).
    """
    out: dict[str, Any] = {}
    for spec in arm_specs:
        scored = [r for r in results if spec in r.get("scores", {})]
        terms = [r["scores"][spec] for r in scored]
        na = sum(1 for r in results if spec in (r.get("not_applicable") or {}))
        base = [r["scores"][cfg.baseline]["score"] for r in scored
                if cfg.baseline in r.get("scores", {})]
        overuse = 0.0
        if spec == "agent":
            for r in results:
                cost = ((r.get("arms", {}).get(spec) or {}).get("info") or {}).get("cost")
                if cost:
                    overuse += scoring.budget_overuse(cost, cfg.budget)
        out[spec] = scoring.total_score(terms, overuse, cfg, not_applicable=na,
                                        baseline_same=sum(base) if base else None)
    return out
