"""One closed optimisation loop: observe → plan → execute → learn, then report.

The four roles hand each other plain data (a profile, candidates, execution
results, verdicts); only the planning backend differs between ``offline``
and ``claude``.  A repository hit (a policy the agent proved on the same
profile) is tried first whatever the backend, so it costs no model call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedcp_agent import synth
from schedcp_agent.budget import Budget, BudgetSpent, load_prices
from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.execute import NOT_DEPLOYABLE, ExecResult, Executor, check_access
from schedcp_agent.learn import IMPROVED, NO_GAIN, Verdict, goal_pids, judge
from schedcp_agent.observe import Observer
from schedcp_agent.offline import OfflinePlanner
from schedcp_agent.plan import Attempt, Candidate, Planner, RepositoryView, repository_hit
from schedcp_agent.targets import Scope, ScopeTracker
from schedcp_agent.transcript import Transcript

_LOGGER = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class Options:
    """What ``schedcp-agent optimize`` was asked to do."""

    scope: Scope
    goal: str | None = None
    command: list[str] | None = None
    bus: str = "system"
    backend: str = "offline"
    revert_at_end: bool = False
    hold: bool | None = None
    observe_seconds: float = 5.0
    measure_seconds: float = 3.0
    """How long an active deployment runs before its feedback is judged (the after window)."""
    max_iterations: int = 3
    budget_usd: float | None = None
    budget_tokens: int | None = None
    budget_seconds: float | None = None
    model: str | None = None
    base_url: str | None = None
    prices: str | None = None
    transcript_dir: Path | None = None
    watch_timeout: float = 90.0
    track: str = "auto"
    """T1 (retune the targets only), T2 (synthesize a sched_ext program only) or auto
    (T2 first when the host offers sched_ext, then T1)."""
    max_programs: int = 4
    """How many programs the model may submit (SubmitProgram) in one run."""
    may_act_on_neighbours: bool = False
    """Whether competitors outside the scope may be acted on (``--may-act-on neighbours``)."""
    neighbours_match: str | None = None
    """Only competitors whose command line matches this may be acted on."""
    io_devices: list[str] = field(default_factory=list)
    """Block devices whose (machine-wide) queue settings the agent may change (``--io-device``)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _planner(opts: Options, client: SchedcpClient, repo: RepositoryView, budget: Budget,
             report: dict[str, Any], t2: bool) -> Planner:
    if opts.backend == "offline":
        return OfflinePlanner(repo, synthesize=t2, t2_only=opts.track == "T2")
    from schedcp_agent.claude import DEFAULT_MODEL, ClaudePlanner

    transcript = Transcript(opts.transcript_dir)
    report["transcript"] = str(transcript.path) if transcript.path else transcript.error
    return ClaudePlanner(client, budget, transcript, model=opts.model or DEFAULT_MODEL,
                         base_url=opts.base_url, t2=t2, max_programs=opts.max_programs)


def t2_allowed(track: str, offer: tuple[bool, str]) -> bool:
    """Whether this run may synthesize a sched_ext program.

    ``--track T2`` asks for it explicitly (a program can be verified in the
    micro-VM on any host; deploying it needs sched_ext); ``auto`` when the
    host offers sched_ext; ``T1`` never.
    """
    return track == "T2" or (track == "auto" and offer[0])


def _attempt_record(cand: Candidate, res: ExecResult, verdict: Verdict | None,
                    feedback: dict[str, Any] | None, recorded: str = "") -> dict[str, Any]:
    return {
        "candidate": cand.as_dict(),
        "execution": {k: getattr(res, k) for k in ("policy_id", "verified", "fixes", "plan",
                                                   "deployment", "state", "reason", "error")},
        "findings": res.findings[:10],
        "verdict": verdict.as_dict() if verdict else None,
        "verdict_recorded": recorded,
        "feedback_notes": (feedback or {}).get("notes", []),
    }


async def _feedback(client: SchedcpClient, dep: str,
                    also: list[int] | None = None) -> dict[str, Any] | None:
    """The deployment's feedback, with ``also`` (goal pids it does not target) included."""
    try:
        if also:
            return dict(await client.call("GetFeedbackFor", dep,
                                          ",".join(str(p) for p in sorted(set(also))[:64])))
        return dict(await client.call("GetFeedback", dep))
    except DaemonError as err:
        _LOGGER.info("no feedback for %s: %s", dep, err)
        return None


class Agent:
    """Runs :meth:`optimize` over one client connection."""

    def __init__(self, opts: Options, progress: Progress) -> None:
        self.opts = opts
        self.progress = progress
        self.client = SchedcpClient(opts.bus)
        self.budget = Budget(opts.budget_usd, opts.budget_tokens, opts.budget_seconds,
                             load_prices(opts.prices))
        self.proc: asyncio.subprocess.Process | None = None
        self.sched_ext: tuple[bool, str] = (False, "not asked yet")
        self.daemon_pid = 0

    async def optimize(self) -> dict[str, Any]:
        """The whole loop; returns the report (see docs/agent.md)."""
        opts = self.opts
        report: dict[str, Any] = {"backend": opts.backend, "scope": opts.scope.describe(),
                                  "attempts": [], "status": "", "transcript": None}
        await self.client.connect()
        try:
            status = await check_access(self.client)
            self.sched_ext = synth.sched_ext_offer(status)
            self.daemon_pid = int(status.get("pid") or 0)
            report["sched_ext"] = {"available": self.sched_ext[0], "reason": self.sched_ext[1]}
            if opts.command:
                self.proc = await asyncio.create_subprocess_exec(*opts.command)
                opts.scope.pids.append(self.proc.pid)
                report["command"] = {"argv": opts.command, "pid": self.proc.pid,
                                     "started": time.monotonic()}
                self.progress(f"started {' '.join(opts.command)} as pid {self.proc.pid}")
            await self._loop(report)
            await self._finish(report)
        finally:
            self.client.close()
        report["cost"] = {**self.budget.as_dict(), "model_calls": self.budget.requests}
        return report

    async def _loop(self, report: dict[str, Any]) -> None:
        opts = self.opts
        executor = Executor(self.client, self.progress,
                            hold=opts.revert_at_end if opts.hold is None else opts.hold,
                            watch_timeout=opts.watch_timeout, sched_ext=self.sched_ext)
        self.executor = executor
        t2 = t2_allowed(opts.track, self.sched_ext)
        report["track"] = {"asked": opts.track, "t2": t2}
        await self.client.watch_deployments(executor.on_signal)
        tracker = ScopeTracker(opts.scope)
        # The baseline is what this run watched: from here to the first write
        # (not whatever ran in the daemon's minute before it: an earlier run's
        # deployment, another client's).
        observed_from = time.monotonic()
        self.progress(f"observing {opts.scope.describe()} for {opts.observe_seconds:.0f} s")
        profile = await Observer(self.client, tracker, opts.observe_seconds,
                                 may_act_on_neighbours=opts.may_act_on_neighbours,
                                 neighbours_match=opts.neighbours_match,
                                 io_devices=opts.io_devices,
                                 protected={1, self.daemon_pid}).observe(opts.goal)
        report["saw"] = profile.as_dict()
        report["goal"] = profile.goal
        report["advice"] = profile.advice
        self.progress(f"profile: {profile.text} (shape {profile.shape}; "
                      f"{len(profile.targets)} targets)")
        for line in profile.evidence:
            self.progress(f"  evidence: {line}")
        for line in profile.advice:
            self.progress(f"advice: {line}")
        if not profile.targets:
            report["status"] = "no targets: nothing in the scope is running"
            return
        if profile.nothing_to_gain:
            # Do no harm: a deployment here could only cost something.
            report["status"] = profile.nothing_to_gain
            self.progress(profile.nothing_to_gain)
            report["kept_deployment"] = None
            return
        repo = RepositoryView(self.client)
        planner = _planner(opts, self.client, repo, self.budget, report, t2)
        hit = await synth.repository_hit(repo, profile) if t2 else None
        if hit is None and opts.track != "T2":
            hit = await repository_hit(repo, profile)
        if hit is not None:
            self.progress(f"plan: {hit.reasoning}")
        attempts: list[Attempt] = []
        kept: str | None = None
        # When the last deployment of this run ended: the next one's baseline starts there.
        clean_since: float = observed_from
        for i in range(opts.max_iterations):
            try:
                self.budget.check()
                cand = hit if (i == 0 and hit is not None) else \
                    await planner.next_candidate(profile, attempts)
            except BudgetSpent as err:
                report["status"] = f"stopped: {err}"
                self.progress(f"stopping cleanly: {err}")
                break
            if cand is None:
                report["status"] = "no candidate left"
                break
            self.progress(f"candidate {i + 1}: {cand.rung} {cand.base}: {cand.reasoning}")
            for note in cand.notes:
                self.progress(f"  {note}")
            res = await executor.deploy(cand)
            feedback = verdict = None
            recorded = ""
            if res.deployment and res.state == "active" and opts.measure_seconds > 0:
                # The after window: long enough for the rank test to tell a gain from noise.
                await asyncio.sleep(opts.measure_seconds)
            if res.deployment:
                feedback = await _feedback(self.client, res.deployment, goal_pids(profile))
                verdict = judge(profile, res.state, feedback, clean_since)
                self.progress(f"learn: {verdict.outcome}: {verdict.reason}")
                # Before any rollback: the daemon keeps it with the policy's history,
                # and the next run reuses the version only if it was "improved".
                recorded = await executor.record_verdict(res.deployment, verdict)
                self.progress(f"learn: verdict {recorded}")
            report["attempts"].append(_attempt_record(cand, res, verdict, feedback, recorded))
            outcome = "refused" if not res.verified else (
                verdict.outcome if verdict else f"not deployed ({res.state or res.error})")
            attempts.append(Attempt(cand, outcome, (verdict.reason if verdict else res.error),
                                    res.deployment, feedback or {},
                                    {"state": res.state, "reason": res.reason}))
            if res.state == NOT_DEPLOYABLE:
                # Honest end: the program passed every stage in the micro-VM, but this
                # host's kernel cannot run it; another program would meet the same wall.
                report["status"] = res.error
                self.progress(f"stopping: {res.error}")
                break
            if verdict is not None and verdict.goal_met:
                kept = res.deployment
                report["status"] = IMPROVED
                report["measured"] = verdict.as_dict()
                break
            if res.deployment:
                # Reverted by the breaker or rolled back here: from now on the
                # targets run without it again.
                clean_since = time.monotonic()
            if res.deployment and res.state not in ("reverted", "failed"):
                await executor.rollback(res.deployment)
                clean_since = time.monotonic()
                self.progress(f"rolled back {res.deployment}: "
                              f"{verdict.outcome if verdict else 'no measurement'}")
        else:
            report["status"] = report["status"] or "iterations used up"
        judged = [a for a in report["attempts"] if a["verdict"]]
        if kept is None and judged and not report["status"].startswith(("stopped", "verified")):
            # Every deployment was rolled back: say so, whatever ended the loop.
            report["status"] = (f"{NO_GAIN}: {len(judged)} deployment(s) tried, none improved "
                                f"{judged[-1]['verdict']['metric']} beyond the noise measured "
                                f"in the same run; rolled back")
        synthesis = getattr(planner, "program_attempts", None)
        if synthesis:
            report["synthesis"] = synthesis
        if not report["status"]:
            report["status"] = "no candidate left"
        if "measured" not in report and report["attempts"]:
            report["measured"] = report["attempts"][-1]["verdict"]
        report["kept_deployment"] = kept

    async def _finish(self, report: dict[str, Any]) -> None:
        executor: Executor | None = getattr(self, "executor", None)
        if self.proc is not None:
            self.progress(f"waiting for pid {self.proc.pid} to finish")
            code = await self.proc.wait()
            cmd = report["command"]
            cmd["exit"] = code
            cmd["seconds"] = round(time.monotonic() - cmd.pop("started"), 2)
        if self.opts.revert_at_end and executor is not None:
            restored = []
            for dep in list(executor.mine):
                out = await executor.rollback(dep)
                restored.append({"deployment": dep,
                                 "summary": (out or {}).get("restore", {}).get("summary")})
                self.progress(f"reverted {dep} at the end")
            report["reverted_at_end"] = restored
            report["kept_deployment"] = None
