"""The Claude backend through the real SDK against a fake Messages API on 127.0.0.1.

The fake (tests/agent/fake_messages.py) is scripted to call D-Bus tools, to
send malformed tool arguments and to overrun the budget; the agent runs as
the real CLI (as the unprivileged test user) against a real schedcpd, with
ANTHROPIC_BASE_URL pointing at the fake.  A repository hit must not reach the fake at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from schedcp_agent.tools import claude_tools
from tests.agent.conftest import KnobWatcher, run_agent, user_dir
from tests.agent.fake_messages import FakeMessagesAPI, last_tool_results, message, tool_use
from tests.deploy.conftest import forced_token
from tests.harness import Procs, calls_as, wait_deployment, wait_workers_ready

# claude-sonnet-4-5 is charged at the claude-sonnet-4 entry: $/M tokens.
PRICE = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}
HAIKU_PRICE = {"input": 1.0, "output": 5.0, "cache_write": 1.25, "cache_read": 0.1}


def _usd(usages: list[dict[str, int]], price: dict[str, float] = PRICE) -> float:
    return sum(u.get("input_tokens", 0) * price["input"] + u.get("output_tokens", 0) *
               price["output"] + u.get("cache_creation_input_tokens", 0) * price["cache_write"]
               + u.get("cache_read_input_tokens", 0) * price["cache_read"]
               for u in usages) / 1e6


def _env(fake: FakeMessagesAPI) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-test-fake"}


def transcripts(procs: Procs, uid: int) -> Path:
    """A transcript directory the agent's user owns (removed with the test's processes)."""
    path = user_dir(uid, "schedcp-agent-transcripts-")
    procs.extra_dirs.append(path)
    return path


@pytest.fixture
def spinners(procs: Procs) -> list[int]:
    """Two CPU-bound targets, and a third in the same scope: three on two CPUs.

    They wait for a CPU, so the agent has something to decide on any host;
    two alone on an idle two-CPU host are "nothing to gain here" and the
    model would never be asked.
    """
    workers = [procs.worker("spin") for _ in range(3)]
    wait_workers_ready(workers)
    return [w.pid for w in workers[:2]]


@pytest.mark.slow
def test_tool_calls_malformed_arguments_and_accounting(agent_daemon, procs: Procs,
                                                       spinners: list[int],
                                                       agent_uid: int) -> None:
    usages = [
        {"input_tokens": 1200, "output_tokens": 60, "cache_creation_input_tokens": 900},
        {"input_tokens": 300, "output_tokens": 70, "cache_read_input_tokens": 900},
        {"input_tokens": 350, "output_tokens": 200, "cache_read_input_tokens": 900},
        {"input_tokens": 400, "output_tokens": 40, "cache_read_input_tokens": 900},
        {"input_tokens": 500, "output_tokens": 90, "cache_read_input_tokens": 900},
    ]
    doc = ('[policy]\nname = "model-fair-batch"\ndescription = "both batch processes as '
           f'SCHED_BATCH with equal weight"\n[[group]]\nname = "batch"\nmatch = {{ pid = '
           f'{sorted(spinners)} }}\ntask = {{ policy = "batch" }}\n')
    seen: dict[str, Any] = {}

    def s1(req: dict[str, Any]) -> dict[str, Any]:
        return tool_use("ListPolicies", {"query": "cpu batch fairness"}, usages[0], "t1")

    def s2(req: dict[str, Any]) -> dict[str, Any]:
        seen["list"] = last_tool_results(req)
        return tool_use("SubmitPolicy", {"doc": "not the argument's name"}, usages[1], "t2")

    def s3(req: dict[str, Any]) -> dict[str, Any]:
        seen["malformed"] = last_tool_results(req)
        return tool_use("SubmitPolicy", {"document": doc}, usages[2], "t3")

    def s4(req: dict[str, Any]) -> dict[str, Any]:
        seen["policy_id"] = json.loads(last_tool_results(req)[0]["content"])
        return tool_use("VerifyPolicy", {"policy_id": seen["policy_id"]}, usages[3], "t4")

    def s5(req: dict[str, Any]) -> dict[str, Any]:
        seen["verify"] = json.loads(last_tool_results(req)[0]["content"])
        return message([{"type": "text", "text": "Equal weight, batch semantics.\n"
                         f"POLICY: {seen['policy_id']}\nRUNG: compose"}], "end_turn", usages[4])

    with FakeMessagesAPI([s1, s2, s3, s4, s5]) as fake, \
            KnobWatcher(lambda: spinners) as watch:
        _rc, report, err = run_agent(agent_daemon.address, [
            "--backend", "claude", "--goal", "fairness", "--match", procs.regex,
            "--revert-at-end", "--max-iterations", "1", "--budget-usd", "1",
            "--transcript-dir", str(transcripts(procs, agent_uid))], agent_uid,
            env=_env(fake))
    assert report is not None, err
    assert len(fake.requests) == 5, err
    first = fake.requests[0]
    assert [t["name"] for t in first["tools"]] == [t["name"] for t in claude_tools("plan")]
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    # The key reached the server (x-api-key or, in newer SDKs, a bearer token).
    assert "sk-test-fake" in (fake.headers[0].get("x-api-key", "") +
                              fake.headers[0].get("authorization", ""))
    assert "is_error" not in seen["list"][0]
    # The malformed call went back to the model as a tool error, and the run went on.
    assert seen["malformed"][0]["is_error"] is True
    assert "unknown argument" in seen["malformed"][0]["content"]
    assert seen["verify"]["passed"] is True
    assert "schedcp1." not in json.dumps(fake.requests)  # the token stays with the agent
    att = report["attempts"][0]
    assert att["candidate"]["policy_id"] == seen["policy_id"]
    assert att["candidate"]["rung"] == "compose"
    assert att["execution"]["deployment"].startswith("dep-")
    assert all(watch.saw(p, policy=os.SCHED_BATCH) for p in spinners), watch.seen
    assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in spinners)
    cost = report["cost"]
    assert cost["model_calls"] == 5
    assert cost["tokens"] == sum(sum(u.values()) for u in usages)
    assert cost["cache_read_tokens"] == 3600 and cost["cache_write_tokens"] == 900
    assert cost["usd"] == pytest.approx(_usd(usages), abs=1e-6)
    lines = [json.loads(x) for x in Path(report["transcript"]).read_text().splitlines()]
    kinds = [x["kind"] for x in lines]
    assert kinds.count("request") == 5 and kinds.count("response") == 5
    assert any(x["kind"] == "tool" and x["is_error"] for x in lines)


@pytest.mark.slow
def test_budget_overrun_stops_cleanly_with_a_report(agent_daemon, procs: Procs,
                                                    spinners: list[int],
                                                    agent_uid: int) -> None:
    before = calls_as(0, agent_daemon.address, [["ListDeployments", "", []]])[0]["ok"]
    usage = {"input_tokens": 5000, "output_tokens": 1000}

    def expensive(req: dict[str, Any]) -> dict[str, Any]:
        return tool_use("GetSummary", {"detail": "brief"}, usage)

    # --base-url and --model win over the environment: ANTHROPIC_BASE_URL
    # points at a closed port, so only the flag can reach the fake.
    with FakeMessagesAPI([expensive, expensive]) as fake:
        rc, report, err = run_agent(agent_daemon.address, [
            "--backend", "claude", "--goal", "fairness", "--match", procs.regex,
            "--base-url", fake.url, "--model", "claude-haiku-4-test",
            "--budget-usd", "0.005", "--transcript-dir", str(transcripts(procs, agent_uid))],
            agent_uid, env={**_env(fake), "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"})
    assert report is not None, err
    assert rc == 1 and "Traceback" not in err
    assert len(fake.requests) == 1
    assert fake.requests[0]["model"] == "claude-haiku-4-test"
    assert report["status"].startswith("stopped: dollar budget spent"), report["status"]
    assert report["cost"]["usd"] == pytest.approx(_usd([usage], HAIKU_PRICE))
    assert report["cost"]["tokens"] == 6000
    assert report["attempts"] == []
    after = calls_as(0, agent_daemon.address, [["ListDeployments", "", []]])[0]["ok"]
    assert json.loads(after) == json.loads(before)  # nothing was deployed
    lines = Path(report["transcript"]).read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "stop"


@pytest.mark.slow
def test_repository_hit_needs_no_model_call(agent_daemon, procs: Procs,
                                            spinners: list[int], agent_uid: int) -> None:
    _rc, first, err = run_agent(agent_daemon.address, [
        "--goal", "throughput", "--match", procs.regex, "--revert-at-end",
        "--max-iterations", "1"], agent_uid)
    assert first is not None, err
    # A deployment that reached "active" is what makes the version proven.
    execution = first["attempts"][0]["execution"]
    assert execution["state"] == "active", first["attempts"][0]
    # The run told the daemon its verdict; on spinners it is mostly "no gain", and
    # a version judged so is not reused.  What a hit reuses is a version an
    # earlier run judged improved: a copy of this one, deployed by the agent's
    # uid (a token signed with the daemon's key: the verifier is not tested here).
    recorded = first["attempts"][0]["verdict_recorded"]
    assert recorded.startswith("recorded: "), recorded
    history = json.loads(calls_as(0, agent_daemon.address, [
        ["GetPolicyHistory", "s", [execution["policy_id"]]]])[0]["ok"])
    assert "agent:" + recorded.split(": ")[1] in [o["outcome"] for o in history["outcomes"]]
    original = json.loads(calls_as(0, agent_daemon.address, [
        ["GetPolicy", "s", [execution["policy_id"]]]])[0]["ok"])["document"]
    [copy] = calls_as(0, agent_daemon.address, [
        ["SubmitPolicy", "s", [original + "# judged improved by an earlier run\n"]]])
    token = forced_token(agent_daemon.state_dir, agent_daemon.address, copy["ok"], uid=agent_uid)
    [dep] = calls_as(agent_uid, agent_daemon.address, [["Deploy", "s", [token]]])
    wait_deployment(agent_daemon.address, dep["ok"], {"active"}, timeout=60)
    improved = json.dumps({"verdict": "improved", "metric": "cpu", "change": 0.2,
                           "p_value": 0.001})
    judged = calls_as(agent_uid, agent_daemon.address, [
        ["RecordVerdict", "ss", [dep["ok"], improved]], ["Rollback", "s", [dep["ok"]]]])
    assert all("ok" in r for r in judged), judged
    with FakeMessagesAPI([]) as fake:
        _rc, report, err = run_agent(agent_daemon.address, [
            "--backend", "claude", "--goal", "throughput", "--match", procs.regex,
            "--revert-at-end", "--max-iterations", "1", "--transcript-dir",
            str(transcripts(procs, agent_uid))], agent_uid, env=_env(fake))
    assert report is not None, err
    assert fake.requests == []
    att = report["attempts"][0]
    assert att["candidate"]["rung"] == "reuse", att["candidate"]
    assert "repository hit" in att["candidate"]["reasoning"]
    assert att["candidate"]["source_id"] == copy["ok"], att["candidate"]
    assert "the agent's last verdict was improved" in att["candidate"]["reasoning"]
    assert att["execution"]["deployment"].startswith("dep-")
    assert report["cost"]["model_calls"] == 0 and report["cost"]["usd"] == 0.0
    assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in spinners)


@pytest.mark.slow
def test_refused_candidate_is_fed_back_and_the_next_one_is_fixed(agent_daemon, procs: Procs,
                                                                 spinners: list[int],
                                                                 agent_uid: int) -> None:
    """Two candidates in one session: execution reads the verifier's findings.

    The first names a group that does not exist (no fix): refused, and the
    outcome goes back to the model (in-context learning).  The second puts
    a group another depends on at SCHED_IDLE: execution fixes it (idle ->
    batch), verifies the fix and deploys it.
    """
    usage = {"input_tokens": 100, "output_tokens": 20}
    a, b = sorted(spinners)

    def doc(name: str, first: str, second: str) -> str:
        return (f'[policy]\nname = "{name}"\ndescription = "iteration test"\n'
                f'[[group]]\nname = "db"\nmatch = {{ pid = [{a}] }}\ntask = {first}\n'
                f'[[group]]\nname = "web"\nmatch = {{ pid = [{b}] }}\n'
                f'depends_on = [{second}]\ntask = {{ policy = "batch" }}\n')

    dangling = doc("model-dangling", '{ policy = "batch" }', '"nosuch"')
    starving = doc("model-starving", '{ policy = "idle" }', '"db"')
    seen: dict[str, Any] = {}

    def submit(text: str) -> Any:
        return lambda req: tool_use("SubmitPolicy", {"document": text}, usage)

    def answer(key: str) -> Any:
        def step(req: dict[str, Any]) -> dict[str, Any]:
            seen[key] = json.loads(last_tool_results(req)[0]["content"])
            return message([{"type": "text", "text": f"POLICY: {seen[key]}\nRUNG: compose"}],
                           "end_turn", usage)
        return step

    def second(req: dict[str, Any]) -> dict[str, Any]:
        seen["feedback"] = req["messages"][-1]["content"]
        return submit(starving)(req)

    with FakeMessagesAPI([submit(dangling), answer("first"), second, answer("second")]) as fake, \
            KnobWatcher(lambda: spinners) as watch:
        _rc, report, err = run_agent(agent_daemon.address, [
            "--backend", "claude", "--goal", "fairness", "--match", procs.regex,
            "--revert-at-end", "--max-iterations", "2", "--budget-usd", "1",
            "--transcript-dir", str(transcripts(procs, agent_uid))], agent_uid,
            env=_env(fake))
    assert report is not None, err
    assert len(fake.requests) == 4, (err, report["status"])
    first, second_att = report["attempts"]
    assert first["execution"]["verified"] is False
    assert "unknown-dependency" in first["execution"]["error"]
    assert first["execution"]["deployment"] == ""
    # The model was told what happened to its first candidate.
    assert "refused" in seen["feedback"] and "unknown-dependency" in seen["feedback"]
    ex = second_att["execution"]
    assert any("SCHED_IDLE -> SCHED_BATCH" in f for f in ex["fixes"]), ex
    assert ex["verified"] is True and ex["deployment"].startswith("dep-")
    assert ex["policy_id"] != seen["second"]  # the fixed version, not the model's
    assert watch.saw(a, policy=os.SCHED_BATCH) and not watch.saw(a, policy=os.SCHED_IDLE)
    assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in spinners)
    assert report["cost"]["model_calls"] == 4 and report["cost"]["tokens"] == 480
