"""Synthesis (issue #20, points 2-3): the agent writes sched_ext programs and keeps them.

The Claude backend runs through the real SDK against the FAKE Messages API
(tests/agent/fake_messages.py) and a real schedcpd; T2 verification boots the
real micro-VM (slow tests).  This host's kernel has no sched_ext: a program
that passes every stage ends "verified, not deployable here".
"""

from __future__ import annotations

import json
import os
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler import scx_policy
from schedcp_agent import synth
from schedcp_agent.observe import WorkloadProfile
from tests.agent.conftest import Procs, run_agent
from tests.agent.fake_messages import FakeMessagesAPI, last_tool_results, message, tool_use
from tests.agent.test_claude import _env, transcripts
from tests.harness import calls_as

# The synthesized programs are verified in the micro-VM (qemu under TCG), and
# the capability tests read whether its cache is there.  alone: the dynamic
# stage judges the program inside the TCG guest, which the host lane's hogs
# stall (one lanes run refused the offline program; ./scripts/test, README).
pytestmark = [pytest.mark.tcg, pytest.mark.alone]

# A call can wait for two micro-VM boots (kernel and dynamic stages).
T2_CONFIG_EXTRA = "[bus]\ncall_timeout_seconds = 600\n"

GOOD = '''[scheduler]
name = "model_wakers"
description = "wakers first, the rest keeps a share"
order = ["fast", "rest"]

[[class]]
name = "fast"
match = { wake_interval_us_max = 50000, avg_run_us_max = 500 }
order = "fifo"
slice_us = 1000
guard = { max_wait_us = 20000 }

[[class]]
name = "rest"
order = "vtime"
slice_us = 5000
guard = { min_share_pct = 20 }
'''
# Schema: "lifo" is no queue order (the error names line 9).
SCHEMA_BAD = GOOD.replace('order = "fifo"', 'order = "lifo"')
# Static: the fast class's aging guard (1 ms) with a 20 ms slice could take every
# dispatch: 'rest' has no bounded wait.
STATIC_BAD = GOOD.replace("slice_us = 1000", "slice_us = 20000").replace(
    "max_wait_us = 20000", "max_wait_us = 1000")
C_TEXT = "#include <scx/common.bpf.h>\nvoid BPF_STRUCT_OPS(x_enqueue, struct task_struct *p)\n"


def _profile() -> WorkloadProfile:
    return WorkloadProfile("cpu-batch", "throughput", "given", "CPU-bound batch processes")


def spin_three(procs: Procs) -> None:
    """Three CPU-bound targets on two CPUs: they wait, so there is something to decide.

    (Two alone on an idle two-CPU host are "nothing to gain here": the agent
    stops before planning.)
    """
    for _ in range(3):
        procs.worker("spin")


def test_program_problem_names_what_is_not_a_program() -> None:
    assert synth.program_problem(GOOD) is None
    assert "looks like C" in str(synth.program_problem(C_TEXT))
    assert "over the limit" in str(synth.program_problem("#" * (synth.MAX_PROGRAM_BYTES + 1)))
    assert "not valid TOML" in str(synth.program_problem("this is prose, not a program"))
    assert "[scheduler]" in str(synth.program_problem('[policy]\nname = "x"\n'))
    assert "'''" in str(synth.program_problem(GOOD + "# '''\n"))
    assert synth.program_problem({"program": GOOD}) is not None


def test_wrapped_program_is_a_t2_policy_the_plugin_accepts() -> None:
    text = synth.wrap(GOOD, "Model Wakers!", _profile(), "first version")
    doc = tomllib.loads(text)
    assert doc["policy"]["track"] == "T2" and synth.is_t2(text)
    assert doc["policy"]["name"] == "agent-scxl-model-wakers"
    assert "profile:throughput.cpu-batch" in doc["policy"]["tags"]
    assert scx_policy.validate(doc, "wrapped") == []
    bad = tomllib.loads(synth.wrap(STATIC_BAD, "x", _profile(), "v2"))
    assert scx_policy.validate(bad, "x") == []
    assert [f["code"] for f in scx_policy.static_check(bad)
            if f["severity"] == "error"] == ["wait-unbounded"]


def test_sched_ext_offer_reads_get_status() -> None:
    status = {"subsystems": {"scheduler": {"capabilities": {"sched_ext": {
        "available": False, "reason": "kernel has no /sys/kernel/sched_ext"}}}}}
    assert synth.sched_ext_offer(status) == (False, "kernel has no /sys/kernel/sched_ext")
    assert synth.sched_ext_offer({})[0] is False
    # A sched_ext kernel where nothing can verify a program (the package's
    # Depends alone: no clang, no qemu): auto does not synthesize.
    caps = {"sched_ext": {"available": True, "reason": "sched_ext enabled"},
            "sched_ext.verify": {"available": False, "reason": "a sched_ext program cannot be "
                                 "verified here: no clang >= 16 found"}}
    offer = synth.sched_ext_offer({"subsystems": {"scheduler": {"capabilities": caps}}})
    assert offer[0] is False and "no clang >= 16" in offer[1], offer
    caps["sched_ext.verify"]["available"] = True
    offer = synth.sched_ext_offer({"subsystems": {"scheduler": {"capabilities": caps}}})
    assert offer == (True, "sched_ext enabled")


def test_the_scheduler_reports_whether_a_program_can_be_verified() -> None:
    from plugins.scheduler import capabilities, microvm
    from plugins.scheduler.microvm import toolchain

    cap = capabilities.detect()["sched_ext.verify"]
    try:
        toolchain.find_clang()
        expected = microvm.available() is None
    except RuntimeError:
        expected = False
    assert cap["available"] is expected, cap
    assert cap["reason"]


def test_non_programs_go_back_as_errors_and_the_budget_stops_a_model_that_never_converges(
        agent_daemon, procs: Procs, agent_uid: int) -> None:
    """C text, an oversized reply and a broken program: each goes back to the model as an
    error; the two non-programs never reach the daemon; the dollar budget ends the run."""
    spin_three(procs)
    time.sleep(1.0)
    usage = {"input_tokens": 2000, "output_tokens": 200}  # $0.009 per call at sonnet prices
    seen: list[list[dict[str, Any]]] = []

    def program(text: str, name: str) -> Any:
        def step(req: dict[str, Any]) -> dict[str, Any]:
            seen.append(last_tool_results(req))
            return tool_use("SubmitProgram", {"program": text, "name": name,
                                              "why": f"try {name}"}, usage, f"t-{name}")
        return step

    script = [program(C_TEXT, "raw-c"), program("#" * (synth.MAX_PROGRAM_BYTES + 10), "huge"),
              program(SCHEMA_BAD, "lifo"), program(SCHEMA_BAD, "lifo-again"),
              program(SCHEMA_BAD, "lifo-forever")]
    with FakeMessagesAPI(script) as fake:
        rc, report, err = run_agent(agent_daemon.address, [
            "--backend", "claude", "--track", "T2", "--goal", "throughput",
            "--match", procs.regex, "--budget-usd", "0.03", "--max-iterations", "1",
            "--transcript-dir", str(transcripts(procs, agent_uid))], agent_uid,
            env=_env(fake))
    assert report is not None, err
    assert rc == 1 and "Traceback" not in err
    assert report["status"].startswith("stopped: dollar budget spent"), report["status"]
    assert len(fake.requests) == 4  # the 4th response spent the budget: its tool never ran
    assert "SubmitProgram" in [t["name"] for t in fake.requests[0]["tools"]]
    results = [r[0] for r in seen[1:]]
    assert results[0]["is_error"] and "looks like C" in results[0]["content"]
    assert results[1]["is_error"] and "over the limit" in results[1]["content"]
    assert results[2]["is_error"] and "line 9" in results[2]["content"], results[2]
    assert "'lifo' is not one of" in results[2]["content"]
    listed = calls_as(0, agent_daemon.address, [["ListPolicies", "s", ["raw huge"]]])[0]["ok"]
    assert not [p for p in json.loads(listed) if p["name"] in ("agent-scxl-raw-c",
                                                                "agent-scxl-huge")]
    lines = [json.loads(x) for x in Path(report["transcript"]).read_text().splitlines()]
    assert lines[-1]["kind"] == "stop"
    assert report["attempts"] == []


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_model_revises_three_programs_until_one_passes_every_stage(
        start_daemon, test_users: dict[str, int], procs: Procs, agent_uid: int) -> None:
    """Compile error, then a static refusal, then a program that passes all four stages in
    the micro-VM; the host cannot run it: the run ends verified, not deployable here."""
    from tests.agent.conftest import AGENT_CONFIG

    daemon = start_daemon(AGENT_CONFIG + T2_CONFIG_EXTRA)
    spin_three(procs)
    time.sleep(1.0)
    usage = {"input_tokens": 800, "output_tokens": 150}
    got: dict[str, Any] = {}

    def submit(text: str, name: str, why: str, key: str) -> Any:
        def step(req: dict[str, Any]) -> dict[str, Any]:
            if key:
                got[key] = last_tool_results(req)[0]
            return tool_use("SubmitProgram", {"program": text, "name": name, "why": why},
                            usage, f"t-{name}")
        return step

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        got["third"] = last_tool_results(req)[0]
        pid = json.loads(got["third"]["content"])["policy_id"]
        return message([{"type": "text", "text": f"Passed every stage.\nPOLICY: {pid}\n"
                         "RUNG: synthesize"}], "end_turn", usage)

    script = [submit(SCHEMA_BAD, "wakers-v1", "first version: wakers FIFO, rest vtime", ""),
              submit(STATIC_BAD, "wakers-v2", "fix line 9: lifo is no order, fifo; "
                     "longer fast slice, tighter aging", "first"),
              submit(GOOD, "wakers-v3", "static: 'rest' unbounded behind the 1 ms aging of "
                     "a 20 ms class; back to a 1 ms slice and a 20 ms aging bound", "second"),
              answer]
    with FakeMessagesAPI(script) as fake:
        rc, report, err = run_agent(daemon.address, [
            "--backend", "claude", "--track", "T2", "--goal", "throughput",
            "--match", procs.regex, "--budget-usd", "1", "--max-iterations", "1",
            "--transcript-dir", str(transcripts(procs, agent_uid))], agent_uid,
            env=_env(fake), timeout=1400)
    assert report is not None, err
    assert len(fake.requests) == 4, err
    first, second = got["first"], json.loads(got["second"]["content"])
    third = json.loads(got["third"]["content"])
    assert first["is_error"] and "line 9" in first["content"]
    assert second["passed"] is False
    static = next(s for s in second["stages"] if s["stage"] == "static")
    assert [f["code"] for f in static["findings"] if f["severity"] == "error"] == \
        ["wait-unbounded"]
    assert third["passed"] is True, json.dumps(third)[:4000]
    stages = {s["stage"]: s for s in third["stages"]}
    assert stages["kernel"]["passed"] and not stages["kernel"]["skipped"]
    assert {"workload", "scheduler-stats"} <= {f["code"] for f in stages["dynamic"]["findings"]}
    # The report and the transcript show the three attempts and why each changed.
    outcomes = [p["outcome"] for p in report["synthesis"]]
    assert outcomes[0].startswith("refused at submission")
    assert outcomes[1] == "refused by the verifier at static"
    assert outcomes[2] == "passed every stage"
    assert "aging" in report["synthesis"][2]["why"]
    att = report["attempts"][0]
    assert att["candidate"]["rung"] == "synthesize"
    assert att["execution"]["verified"] is True and att["execution"]["deployment"] == ""
    assert att["execution"]["state"] == "not-deployable"
    assert report["status"].startswith("verified, not deployable here"), report["status"]
    assert rc == 1 and "Traceback" not in err
    keep = os.environ.get("SCHEDCP_KEEP_TRANSCRIPT")  # docs/agent.md's worked example
    if keep:
        shutil.copy(report["transcript"], keep)
        Path(keep + ".report.json").write_text(json.dumps(report, indent=1))
    lines = [json.loads(x) for x in Path(report["transcript"]).read_text().splitlines()]
    tools = [x for x in lines if x["kind"] == "tool" and x["name"] == "SubmitProgram"]
    assert [t["is_error"] for t in tools] == [True, False, False]
    # Point 3: the version is kept with provenance agent, state verified.
    pol = json.loads(calls_as(0, daemon.address, [["GetPolicy", "s", [third["policy_id"]]]])
                     [0]["ok"])
    assert pol["provenance"] == "agent" and pol["state"] == "verified"
    assert "profile:throughput.cpu-batch" in pol["tags"] or "agent" in pol["tags"]


def _verify_calls(address: str) -> int:
    out = calls_as(0, address, [["GetAudit", "us", [1000, "VerifyPolicy"]]])[0]["ok"]
    return len(json.loads(out))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_offline_derives_verifies_keeps_and_reuses_a_program(
        start_daemon, test_users: dict[str, int], procs: Procs, agent_uid: int) -> None:
    """Offline, --track T2: scxlang.derive writes the program from the profile, the daemon
    verifies it in the micro-VM and keeps it (provenance agent); the next run on the same
    profile reuses it from the repository instead of writing and verifying a new one."""
    from tests.agent.conftest import AGENT_CONFIG

    daemon = start_daemon(AGENT_CONFIG + T2_CONFIG_EXTRA)
    spin_three(procs)
    time.sleep(1.0)
    args = ["--track", "T2", "--goal", "throughput", "--match", procs.regex,
            "--max-iterations", "2"]
    rc, first, err = run_agent(daemon.address, args, agent_uid, timeout=1400)
    assert first is not None, err
    assert rc == 1 and "Traceback" not in err
    assert first["sched_ext"]["available"] is False
    att = first["attempts"][0]
    assert att["candidate"]["rung"] == "synthesize", att["candidate"]
    assert att["candidate"]["notes"] and att["candidate"]["notes"][0].startswith("rule: ")
    ex = att["execution"]
    assert ex["verified"] is True, json.dumps(ex, indent=1)
    assert ex["state"] == "not-deployable" and ex["deployment"] == ""
    assert first["status"].startswith("verified, not deployable here: "), first["status"]
    assert len(first["attempts"]) == 1  # the same wall stops the run: no T1 with --track T2
    pol = json.loads(calls_as(0, daemon.address, [["GetPolicy", "s", [ex["policy_id"]]]])
                     [0]["ok"])
    assert pol["provenance"] == "agent" and pol["state"] == "verified"
    assert pol["track"] == "T2" and f"profile:{first['saw']['key']}" in pol["tags"]
    assert "derived" in pol["tags"]
    verifies = _verify_calls(daemon.address)
    assert verifies >= 1  # the audit sees VerifyPolicy calls (else the last check is void)

    rc, second, err = run_agent(daemon.address, args, agent_uid, timeout=600)
    assert second is not None, err
    att2 = second["attempts"][0]
    assert att2["candidate"]["rung"] == "reuse", att2["candidate"]
    assert att2["candidate"]["source_id"] == ex["policy_id"]
    assert "repository hit" in att2["candidate"]["reasoning"]
    assert att2["execution"]["state"] == "not-deployable"
    assert _verify_calls(daemon.address) == verifies  # nothing new written or verified


def test_t2_is_allowed_when_asked_or_when_the_host_offers_sched_ext() -> None:
    from schedcp_agent.agent import t2_allowed

    assert t2_allowed("T2", (False, "no sched_ext")) is True  # verify-only is still useful
    assert t2_allowed("auto", (False, "no sched_ext")) is False
    assert t2_allowed("auto", (True, "sched_ext present")) is True
    assert t2_allowed("T1", (True, "sched_ext present")) is False


def test_after_a_deployment_the_model_gets_the_breaker_and_feedback_figures() -> None:
    from schedcp_agent.claude import ClaudePlanner
    from schedcp_agent.plan import Attempt, Candidate

    cand = Candidate("agent-scxl-x", "synthesize", "", "", policy_id="ab" * 32)
    feedback = {"notes": ["rq wait up 3x"], "metrics": {"rq_wait": {"before": {"median": 0.1},
                                                                   "after": {"median": 0.3}}}}
    att = Attempt(cand, "goal not met (reverted)", "run-queue wait got worse", "dep-1",
                  feedback, {"state": "reverted", "reason": "circuit breaker: p99 wake 4.2x"})
    text = ClaudePlanner._attempt_message(att)
    assert "circuit breaker: p99 wake 4.2x" in text
    assert "rq wait up 3x" in text and '"median": 0.3' in text
