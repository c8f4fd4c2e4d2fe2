"""The planners read the repository: antipatterns are avoided, groupless policies skipped.

- A breaker trip recorded on the agent's version of ``latency-protect`` for
  the profile ``latency.latency-beside-cpu-hogs`` (made here: the base bound
  to the workload with a CPU-share guard the canary is bound to break)
  makes the next agent run on that profile skip ``latency-protect`` and
  pick the next rule, saying why.
- A policy without ``[[group]]`` (the T2 sched_ext ``scx-vtime``) in the
  repository is skipped by the offline planner; it moves on to the next rule.
- The agent's verdicts (``RecordVerdict``) decide reuse: a proven version
  whose last verdict is ``no-gain`` is not reused, one judged ``improved``
  is, and ``worse`` records an antipattern for the profile.
"""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from typing import Any

import pytest

from schedcp_agent import document, offline, plan
from schedcp_agent.client import SchedcpClient
from schedcp_agent.observe import _DESCRIPTION, WorkloadProfile
from schedcp_agent.offline import OfflinePlanner
from schedcp_agent.plan import RepositoryView, configure
from tests.agent.conftest import AGENT_CONFIG, run_agent
from tests.deploy.conftest import QUICK, forced_token
from tests.harness import ROOT, Procs, call, wait_deployment, wait_until, wait_workers_ready

# The daemon's default circuit breaker (AGENT_CONFIG's lenient one would not trip).
STRICT_CONFIG = AGENT_CONFIG.split("[breaker]")[0]
PROFILE = "latency-beside-cpu-hogs"


@pytest.mark.slow
def test_an_antipattern_on_the_profile_makes_the_planner_skip_that_base(
        start_daemon, test_users: dict[str, int], procs: Procs) -> None:
    daemon = start_daemon(STRICT_CONFIG)
    probe = procs.worker("periodic")
    hogs = [procs.worker("spin") for _ in range(2)]
    wait_workers_ready([probe, *hogs])
    # What an earlier agent run might have deployed: latency-protect bound to this
    # profile, with a guard that its batch group keeps 90 % of its CPU.  Both hogs
    # share one CPU, so the canary (one hog idle beside the other) breaks that
    # whatever else the host runs, and the breaker records an antipattern.
    for h in hogs:
        os.sched_setaffinity(h.pid, {0})
    base = tomllib.loads((ROOT / "policies" / "latency-protect.toml").read_text())
    bad = document.retarget(
        base, {"latency": [probe.pid], "batch": sorted(h.pid for h in hogs)},
        base_name="latency-protect", profile_key=f"latency.{PROFILE}",
        profile_text=f"{_DESCRIPTION[PROFILE]}; goal: latency", goal="latency")
    bad["guard"] = [{"group": "batch", "metric": "cpu_share", "min_ratio": 0.9}]
    policy_id = call(daemon.address, "SubmitPolicy", "s", document.dump(bad))
    for _ in range(3):  # the sandbox test measures on a shared host: retry as the agent does
        token, report = call(daemon.address, "VerifyPolicy", "s", policy_id)
        if token:
            break
    assert token, report
    info = wait_deployment(daemon.address, call(daemon.address, "Deploy", "s", token),
                           {"active", "reverted", "failed"}, timeout=60)
    assert info["state"] == "reverted", info["events"]  # the breaker saw the probe starve
    history = json.loads(call(daemon.address, "GetPolicyHistory", "s", policy_id))
    assert history["antipatterns"], history
    for h in hogs:
        os.sched_setaffinity(h.pid, range(os.cpu_count() or 1))

    _rc, report, err = run_agent(daemon.address, [
        "--goal", "latency", "--match", procs.regex, "--revert-at-end",
        "--max-iterations", "1"], test_users["member"])
    assert report is not None, err
    assert report["saw"]["shape"] == PROFILE, report["saw"]["evidence"]
    cand = report["attempts"][0]["candidate"]
    assert cand["base"] == "latency-protect-cgroup", cand
    assert any(n.startswith("avoided (antipattern on this profile): latency-protect")
               for n in cand["notes"]), cand["notes"]
    for pid in [probe.pid, *(h.pid for h in hogs)]:
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER, pid


def test_a_policy_without_groups_is_skipped(agent_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "policies" / "t2" / "scx-vtime.toml").read_text()
    assert "group" not in tomllib.loads(text)
    call(agent_daemon.address, "SubmitPolicy", "s", text)
    profile = WorkloadProfile("cpu-batch", "throughput", "given", "t",
                              roles={"batch": [os.getpid()]})
    # A rule naming the groupless policy first (as a repository hit might).
    monkeypatch.setitem(offline.RULES, ("cpu-batch", "throughput"), [
        ("scx-vtime", "host-wide vtime scheduler", {}),
        *offline.RULES[("cpu-batch", "throughput")]])

    async def plan() -> tuple[Any, Any]:
        async with SchedcpClient(agent_daemon.address) as client:
            repo = RepositoryView(client)
            found = await repo.by_name("scx-vtime")
            assert found is not None  # it is in the repository ...
            direct = await configure(repo, profile, "scx-vtime", "why")
            return direct, await OfflinePlanner(repo).next_candidate(profile, [])

    direct, cand = asyncio.run(plan())
    assert direct is None  # ... and not a candidate: nothing to bind to the targets
    assert cand is not None and cand.base == "batch-throughput", cand
    doc = tomllib.loads(cand.text)
    assert [g["match"] for g in doc["group"]] == [{"pid": [os.getpid()]}]


def test_without_a_rule_it_composes_once_then_has_no_candidate(agent_daemon) -> None:
    profile = WorkloadProfile("unclear", "fairness", "inferred", "t",
                              roles={"all": [os.getpid()]})

    async def plan() -> list[Any]:
        async with SchedcpClient(agent_daemon.address) as client:
            planner = OfflinePlanner(RepositoryView(client))
            first = await planner.next_candidate(profile, [])
            return [first, await planner.next_candidate(profile, [])]

    composed, nothing = asyncio.run(plan())
    assert composed is not None and composed.rung == "compose", composed
    assert "from primitives" in composed.reasoning
    doc = tomllib.loads(composed.text)
    assert doc["group"][0]["match"] == {"pid": [os.getpid()]}
    assert f"profile:{profile.key}" in doc["policy"]["tags"]
    assert nothing is None  # the loop then ends with "no candidate left"


def _version(profile: WorkloadProfile) -> str:
    """An agent version for ``profile``, as ``document.retarget`` writes it."""
    base = {"policy": {"name": "verdict-base", "description": "latency guard for a test"},
            "group": [{"name": "latency", "match": {"pid": [0]},
                       "task": {"timer_slack_ns": 1}}]}
    return document.dump(document.retarget(
        base, plan.bindings_for(profile), base_name="verdict-base", profile_key=profile.key,
        profile_text=profile.text, goal=profile.goal))


def test_reuse_follows_the_agents_last_verdict(start_daemon, procs: Procs) -> None:
    """No verdict: today's rule; no-gain: not reused; improved: reused; worse: antipattern."""
    daemon = start_daemon(QUICK)
    probe = procs.worker("periodic")
    wait_workers_ready([probe])
    profile = WorkloadProfile(PROFILE, "latency", "given", _DESCRIPTION[PROFILE],
                              roles={"latency": [probe.pid]})
    policy_id = call(daemon.address, "SubmitPolicy", "s", _version(profile))

    def deployment(verdict: str | None) -> str:
        """Deploy the version to active, record ``verdict`` (as its owner), roll it back."""
        dep = call(daemon.address, "Deploy", "s",
                   forced_token(daemon.state_dir, daemon.address, policy_id))
        wait_deployment(daemon.address, dep, {"active"})
        wait_until(lambda: json.loads(call(daemon.address, "GetPolicy", "s", policy_id))
                   ["state"] == "proven", what="the version is proven")
        if verdict:
            call(daemon.address, "RecordVerdict", "ss", dep, json.dumps(
                {"verdict": verdict, "metric": "wait", "change": 0.1, "p_value": 0.5}))
        call(daemon.address, "Rollback", "s", dep)
        return dep

    async def plan_now() -> tuple[Any, dict[str, str]]:
        async with SchedcpClient(daemon.address) as client:
            repo = RepositoryView(client)
            return await plan.repository_hit(repo, profile), await repo.avoided_bases(profile)

    deployment(None)  # deployed by hand, or by an agent older than RecordVerdict
    hit, _ = asyncio.run(plan_now())
    assert hit is not None and hit.source_id == policy_id, hit
    assert "no agent verdict recorded" in hit.reasoning
    deployment("no-gain")  # what redis reused in the benchmark (docs/benchmark.md, run c)
    hit, _ = asyncio.run(plan_now())
    assert hit is None
    deployment("improved")  # the latest verdict counts
    hit, avoided = asyncio.run(plan_now())
    assert hit is not None and "the agent's last verdict was improved" in hit.reasoning, hit
    assert avoided == {}
    deployment("worse")
    hit, avoided = asyncio.run(plan_now())
    assert hit is None
    assert list(avoided) == ["verdict-base"] and "wait regressed x1.1" in avoided["verdict-base"]
    history = json.loads(call(daemon.address, "GetPolicyHistory", "s", policy_id))
    assert [a["profile"] for a in history["antipatterns"]] == [f"profile:{profile.key}"]
