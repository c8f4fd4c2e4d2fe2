"""The agent's parts without a daemon: the tool table, documents, budget, judging."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from schedcp_agent import document
from schedcp_agent.budget import Budget, BudgetSpent, price_for
from schedcp_agent.claude import scope_problem
from schedcp_agent.contention import Competitor, allow, competitors, contended, unit_of
from schedcp_agent.execute import fix_document
from schedcp_agent.learn import judge
from schedcp_agent.observe import Observer, WorkloadProfile, classify_perf
from schedcp_agent.report import render
from schedcp_agent.targets import Scope, ScopeTracker, read_proc, resolve
from schedcp_agent.tools import TOOLS, check_arguments, claude_tools, tool
from schedcp_agent.transcript import Transcript, default_dir
from schedcpd.api import collect
from schedcpd.manager import Manager
from tests.harness import ROOT, wait_until


def test_every_tool_is_a_daemon_method_with_its_signature_and_action() -> None:
    methods = {m.name: m for m in collect(Manager)[0]}
    for t in TOOLS:
        assert t.name in methods, t.name
        spec = methods[t.name]
        assert t.signature == spec.in_signature, t.name
        assert t.out == spec.out_signature, t.name
        assert t.action == spec.action, t.name
        assert [a.name for a in t.args] == [n for n, _ in spec.in_args], t.name
        if len(spec.out_args) > 1:  # several results are named as the daemon names them
            assert t.out_names == tuple(n for n, _ in spec.out_args), t.name


def test_claude_tools_come_from_the_table_with_a_cache_breakpoint() -> None:
    defs = claude_tools("plan")
    names = [d["name"] for d in defs]
    assert names == [t.name for t in TOOLS if "plan" in t.roles]
    assert "Deploy" not in names and "Rollback" not in names  # execution stays with the agent
    assert defs[-1]["cache_control"] == {"type": "ephemeral"}
    assert all("cache_control" not in d for d in defs[:-1])
    submit = next(d for d in defs if d["name"] == "SubmitPolicy")
    assert submit["input_schema"]["required"] == ["document"]


@pytest.mark.parametrize(("args", "message"), [
    ({"doc": "x"}, "unknown argument"),
    ({}, "missing required argument 'document'"),
    ({"document": 5}, "must be a string"),
    ("text", "takes a JSON object"),
])
def test_malformed_arguments_are_explained(args: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_arguments(tool("SubmitPolicy"), args)


def test_numbers_are_range_checked() -> None:
    assert check_arguments(tool("RunPerfStat"), {"pid": 1, "cgroup": "", "seconds": 2}) == \
        [1, "", 2.0]
    with pytest.raises(ValueError, match="<= 30"):
        check_arguments(tool("RunPerfStat"), {"pid": 1, "cgroup": "", "seconds": 99})
    with pytest.raises(ValueError, match="integer"):
        check_arguments(tool("RunPerfStat"), {"pid": True, "cgroup": "", "seconds": 1})


POLICY_FILES = sorted((ROOT / "policies").rglob("*.toml"))
GROUPLESS = [p for p in POLICY_FILES if not document.has_groups(tomllib.loads(p.read_text()))]


@pytest.mark.parametrize("path", [p for p in POLICY_FILES if p not in GROUPLESS],
                         ids=lambda p: p.stem)
def test_retarget_round_trips_every_builtin(path: Path) -> None:
    # Every part of a multi-subsystem policy is bound, each group by its
    # subsystem's pid selector (scheduler: pid; io, dvfs: pids).
    name = path.stem
    base = tomllib.loads(path.read_text())
    names = sorted({g["name"] for _q, g in document.groups(base)})
    bindings = {n: [100 + i] for i, n in enumerate(names)}
    doc = document.retarget(base, bindings, base_name=name, profile_key="latency.x",
                            profile_text="a test", goal="latency")
    text = document.dump(doc)
    assert tomllib.loads(text) == doc
    bound = document.groups(doc)
    assert len(bound) == len(document.groups(base))
    for sub, _prefix, part in document.parts(doc):
        key = document.MATCH_KEY[sub]
        for g in part["group"]:
            assert g["match"] == {key: bindings[g["name"]]}, (sub, g)
    assert scope_problem(text, {100 + i for i in range(len(names))}) is None, text
    assert "profile:latency.x" in doc["policy"]["tags"]
    assert doc["policy"]["name"].startswith(f"agent-{name}"[:20])


def test_io_device_tables_go_only_to_the_devices_the_user_allowed() -> None:
    base = tomllib.loads((ROOT / "policies/io-protect-reads.toml").read_text())
    kept = document.retarget(base, {"bulk-writer": [7]}, base_name="x", profile_key="k",
                             profile_text="t", goal="latency", devices=["loop42"])
    assert [d["name"] for d in kept["device"]] == ["loop42"]
    assert kept["device"][0]["tunables"] == base["device"][0]["tunables"]
    assert scope_problem(document.dump(kept), {7}, ["loop42"]) is None
    assert "machine-wide" in str(scope_problem(document.dump(kept), {7}))
    dropped = document.retarget(base, {"bulk-writer": [7]}, base_name="x", profile_key="k",
                                profile_text="t", goal="latency")
    assert "device" not in dropped and dropped["group"][0]["match"] == {"pids": [7]}


def test_scope_checks_every_part_of_a_multi_subsystem_policy() -> None:
    base = tomllib.loads((ROOT / "policies/database.toml").read_text())
    doc = document.retarget(base, {"database": [7]}, base_name="database", profile_key="k",
                            profile_text="t", goal="latency")
    assert scope_problem(document.dump(doc), {7}) is None
    doc["io"]["group"][0]["match"] = {"pids": [7, 8]}
    assert "io/database" in str(scope_problem(document.dump(doc), {7}))
    doc["io"]["group"][0]["match"] = {"pid": [7]}  # the scheduler's selector in an io part
    assert "pids" in str(scope_problem(document.dump(doc), {7}))
    # A part left with nothing to bind is dropped with its subsystem.
    only_cpu = document.retarget(base, {"database": [7]}, base_name="d", profile_key="k",
                                 profile_text="t", goal="latency")
    only_cpu["io"]["group"] = []
    again = document.retarget(only_cpu, {"database": [7]}, base_name="d", profile_key="k",
                              profile_text="t", goal="latency")
    assert again["policy"]["subsystems"] == ["scheduler"] and "io" not in again


def test_shipped_policies_include_a_groupless_one() -> None:
    # What the next test examines exists: a T2 policy without [[group]]s.
    assert any(p.stem == "scx-vtime" for p in GROUPLESS), POLICY_FILES


@pytest.mark.parametrize("path", GROUPLESS, ids=lambda p: p.stem)
def test_policies_without_groups_are_skipped_not_retargeted(path: Path) -> None:
    text = path.read_text()
    base = tomllib.loads(text)
    assert not document.has_groups(base)
    doc = document.retarget(base, {"batch": [100]}, base_name=path.stem,
                            profile_key="throughput.cpu-batch", profile_text="a test",
                            goal="throughput")
    assert doc["group"] == []  # nothing to bind: the planners skip it (plan.configure)
    assert tomllib.loads(document.dump(doc))["policy"] == doc["policy"]
    # A model that submits it is told why, as a tool error: it acts on the whole host.
    assert "no [[group]]" in str(scope_problem(text, {100}))


def test_the_report_states_tokens_and_dollars() -> None:
    text = render({"status": "goal met", "attempts": [], "cost": {
        "tokens": 1234, "input_tokens": 1000, "output_tokens": 234, "usd": 0.0123,
        "model_calls": 2, "seconds": 3.5}})
    assert "cost:     1234 tokens (in 1000, out 234" in text
    assert "$0.0123, 2 model calls" in text


def test_fix_document_moves_a_depended_on_group_off_idle() -> None:
    text = ('[policy]\nname = "x"\ndescription = "x"\n[[group]]\nname = "db"\n'
            'match = { pid = [1] }\ntask = { policy = "idle" }\n[[group]]\nname = "web"\n'
            'match = { pid = [2] }\ndepends_on = ["db"]\ntask = { nice = -5 }\n')
    fixed = fix_document(text, [{"code": "starvation-risk", "field": "group[0]"}])
    assert fixed is not None
    assert tomllib.loads(fixed[0])["group"][0]["task"]["policy"] == "batch"
    assert fix_document(text, [{"code": "no-progress", "field": "group[0]"}]) is None


def test_scope_problem_refuses_other_processes() -> None:
    ok = '[[group]]\nname = "b"\nmatch = { pid = [5] }\ntask = { policy = "batch" }\n'
    assert scope_problem(ok, {5, 6}) is None
    assert "outside the targets" in str(scope_problem(ok, {6}))
    broad = '[[group]]\nname = "b"\nmatch = { comm = "sshd" }\ntask = { nice = 19 }\n'
    assert "pid only" in str(scope_problem(broad, {5}))


def test_budget_counts_every_kind_of_token_and_stops() -> None:
    b = Budget(max_usd=0.05)
    usage = SimpleNamespace(input_tokens=1000, output_tokens=1000,
                            cache_creation_input_tokens=2000, cache_read_input_tokens=10000)
    cost = b.add("claude-sonnet-4-5", usage)
    assert price_for(b.prices, "claude-sonnet-4-5")[0] == "claude-sonnet-4"
    assert cost == pytest.approx((1000 * 3 + 1000 * 15 + 2000 * 3.75 + 10000 * 0.3) / 1e6)
    assert b.tokens == 14000
    b.check()
    b.add("claude-sonnet-4-5", usage)
    b.add("claude-sonnet-4-5", usage)
    with pytest.raises(BudgetSpent, match="dollar budget spent"):
        b.check()
    assert b.output_allowance("claude-sonnet-4-5", 4096) == 1
    assert price_for(b.prices, "some-new-model")[0] == "default"


def test_perf_classification() -> None:
    def perf(ms: float, cs: float) -> dict[str, object]:
        return {"elapsed": 1.0, "events": {
            "task-clock": {"value": ms, "counted": True},
            "context-switches": {"value": cs, "counted": True}}}
    assert classify_perf(perf(950, 40))[0] == "cpu-bound"
    assert classify_perf(perf(100, 500))[0] == "interactive"
    assert classify_perf(perf(1, 0))[0] == "idle"


def _fb_both(before: list[float], after: list[float], n: int = 20,
             cpu: tuple[list[float], list[float]] | None = None) -> dict[str, object]:
    """The wait and the CPU figure of pid 7 (both ``before``/``after`` unless ``cpu``)."""
    def s(v: list[float]) -> dict[str, float]:
        return {"median": v[1], "p10": v[0], "p90": v[2], "mean": v[1], "n": n}
    cpu_b, cpu_a = cpu or (before, after)
    return {"pids": {"7": {"wait": {"before": s(before), "after": s(after)},
                           "cpu": {"before": s(cpu_b), "after": s(cpu_a)}}}}


def test_judge_keeps_only_a_gain_beyond_the_noise_of_the_same_run() -> None:
    prof = WorkloadProfile("latency-beside-cpu-hogs", "latency", "given", "t",
                           roles={"latency": [7]})
    steady = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # the latency target's CPU: unchanged

    def lat(before: list[float], after: list[float], n: int = 20) -> dict[str, object]:
        return _fb_both(before, after, n, steady)

    # Lower is better: the after median below the before window's p10.
    kept = judge(prof, "active", lat([0.1, 0.2, 0.3], [0.01, 0.02, 0.03]))
    assert kept.goal_met and kept.outcome == "improved" and kept.noise == (0.1, 0.3)
    assert "beyond the before window's noise band 0.1..0.3" in kept.reason, kept.reason
    # Better median, but inside the band: noise, rolled back as "no gain".
    inside = judge(prof, "active", lat([0.1, 0.2, 0.3], [0.12, 0.15, 0.2]))
    assert not inside.goal_met and inside.outcome == "no gain" and inside.improved
    assert "inside the before window's noise band" in inside.reason
    # The old rule kept a regression within 10 %: now it is no gain, and rolled back.
    slight = judge(prof, "active", lat([0.1, 0.2, 0.3], [0.1, 0.21, 0.3]))
    assert not slight.goal_met and slight.outcome == "no gain"
    worse = judge(prof, "active", lat([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]))
    assert not worse.goal_met and worse.outcome == "worse"
    # A band with no width: the gain must still reach MIN_GAIN (3 %).
    flat = WorkloadProfile("cpu-batch", "throughput", "given", "t", roles={"batch": [7]})
    tiny = judge(flat, "active", _fb_both([2.0, 2.0, 2.0], [2.0, 2.01, 2.02]))
    assert not tiny.goal_met and "minimum gain" in tiny.reason, tiny.reason
    assert judge(flat, "active", _fb_both([1.0, 1.0, 1.0], [1.5, 1.6, 1.7])).goal_met
    # Too few samples, no figure, or a deployment the daemon ended: never kept.
    few = judge(prof, "active", lat([0.1, 0.2, 0.3], [0.01, 0.02, 0.03], n=2))
    assert not few.goal_met and "too few" in few.reason
    assert judge(prof, "active", None).outcome == "no gain"
    # Only the machine-wide wait (the targets were not sampled): never evidence.
    rq = {"median": 0.2, "p10": 0.1, "p90": 0.3, "n": 20}
    system = judge(prof, "active", {"pids": {}, "metrics": {"rq_wait": {
        "before": rq, "after": {**rq, "median": 0.01, "p10": 0.0, "p90": 0.02}}}})
    assert system.metric.startswith("system") and not system.goal_met
    assert "no evidence about them" in system.reason
    ended = judge(prof, "reverted", lat([0.1, 0.2, 0.3], [0.01, 0.02, 0.03]))
    assert not ended.goal_met and ended.outcome == "ended reverted"


def test_nothing_to_gain_needs_fitting_threads_and_no_competitor() -> None:
    tracker = ScopeTracker(Scope(pids=[7]))
    tracker.started, tracker.ended = 0.0, 4.0
    prof = WorkloadProfile("job-batch", "throughput", "given", "t", roles={"batch": [7]})
    obs = Observer(None, tracker)  # type: ignore[arg-type]
    # Two cores run, almost no wait: one thread per CPU.
    tracker.schedstat = {7: (0.0, (0, 0), 4.0, (8 * 10**9, 10**8))}
    assert obs._nothing_to_gain(prof).startswith("nothing to gain here")
    # The threads waited for each other (4 jobs on 2 CPUs): something to decide.
    tracker.schedstat = {7: (0.0, (0, 0), 4.0, (8 * 10**9, 8 * 10**9))}
    assert obs._nothing_to_gain(prof) == ""
    # Something else competes on the machine, or a latency task is there: decide.
    tracker.schedstat = {7: (0.0, (0, 0), 4.0, (8 * 10**9, 10**8))}
    obs.found = [Competitor(9, "sh", "cpu-bound", 0.9, 1, "/", "/", "9:sh")]
    assert obs._nothing_to_gain(prof) == ""
    obs.found = []
    prof.shape = "latency-beside-cpu-hogs"
    assert obs._nothing_to_gain(prof) == ""


def test_competitors_come_from_the_summary_outside_the_scope() -> None:
    me = os.getpid()
    summary = {"top": [
        {"pid": me, "comm": "python3", "cls": "cpu-bound", "cpu": 0.9, "thr": 1,
         "cg": "/user.slice/user-0.slice/session-3.scope", "root": f"{me}:python3"},
        {"pid": 1, "comm": "init", "cls": "interactive", "cpu": 0.9, "cg": "/init.scope"},
        {"pid": 2, "comm": "kthreadd", "cls": "cpu-bound", "cpu": 0.9, "root": "kernel"},
    ], "psi": {"cpu": {"some": [40.0, 30.0]}}}
    found = competitors(summary, scope=set(), exclude=set())
    assert [c.pid for c in found] == [me]
    assert found[0].unit == "session-3.scope" and found[0].cmdline
    assert competitors(summary, scope={me}, exclude=set()) == []
    assert unit_of("/system.slice/nginx.service/x") == "nginx.service"
    assert allow(found, False, None) == [] and not found[0].may_act
    assert allow(found, True, "no-such-command") == []
    assert allow(found, True, None) == found and found[0].may_act
    assert contended({}, summary) and not contended({7: 0.01}, {"psi": {}})


def test_transcripts_go_to_the_units_state_directory(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    t = Transcript(None)
    assert t.path is not None and t.path.parent == tmp_path / "state" / "transcripts"
    t.write("request", model="m")
    assert oct(t.path.stat().st_mode & 0o777) == "0o600"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg" / "schedcp-agent" / "transcripts"


def test_token_and_time_budgets_stop_too() -> None:
    usage = SimpleNamespace(input_tokens=600, output_tokens=500)
    b = Budget(max_tokens=1000)
    b.add("claude-haiku-4-5", usage)
    with pytest.raises(BudgetSpent, match="token budget spent: 1100 of 1000"):
        b.check()
    assert Budget(max_tokens=5000).output_allowance("claude-haiku-4-5", 4096) == 4096
    with pytest.raises(BudgetSpent, match="time budget spent"):
        Budget(max_seconds=0.0).check()


def test_cgroup_and_pid_scopes_resolve_to_the_processes_in_them() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        proc = wait_until(lambda: (p := read_proc(child.pid)) is not None and p.comm == "sleep"
                          and p, 10, "the child exec'd sleep", interval=0.02)
        by_cgroup = resolve(Scope(cgroup=proc.cgroups[0]))
        assert child.pid in by_cgroup and os.getpid() not in by_cgroup  # never the agent
        assert list(resolve(Scope(pids=[child.pid]))) == [child.pid]
        assert child.pid in resolve(Scope(match=r"^sleep 30$"))
    finally:
        child.kill()
        child.wait()


def test_judge_reads_the_io_rate_of_readers_for_io_shapes() -> None:
    def s(v: list[float]) -> dict[str, float]:
        return {"median": v[1], "p10": v[0], "p90": v[2], "mean": v[1], "n": 20}

    def fb(before: list[float], after: list[float]) -> dict[str, object]:
        # The reader's run-queue wait did not move; its reads went 4x faster.
        flat = {"before": s([0.01, 0.02, 0.03]), "after": s([0.01, 0.02, 0.03])}
        return {"pids": {"7": {"wait": flat, "cpu": flat,
                               "io_kbs": {"before": s(before), "after": s(after)}}}}

    for shape, role in (("io-reads-beside-writer", "reader"),
                        ("latency-beside-cpu-and-io", "database")):
        prof = WorkloadProfile(shape, "latency", "inferred", "t",
                               roles={role: [7], "bulk-writer": [8]})
        kept = judge(prof, "active", fb([500, 600, 700], [2400, 2600, 2800]))
        assert kept.goal_met and kept.metric.startswith("block-layer I/O"), kept
        assert role in kept.metric
        assert judge(prof, "active", fb([500, 600, 700], [100, 150, 200])).outcome == "worse"
    # Other shapes keep their CPU figures.
    cpu = WorkloadProfile("latency-beside-cpu-hogs", "latency", "given", "t",
                          roles={"latency": [7]})
    assert judge(cpu, "active", fb([500, 600, 700], [2400, 2600, 2800])).metric.startswith(
        "run-queue wait")
