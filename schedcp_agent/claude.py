"""The Claude planning backend: tool use over the Messages API, tools = D-Bus methods.

The model gets the observation's profile and the planning tools of
:data:`schedcp_agent.tools.TOOLS` (ListPolicies, GetPolicy, GetPolicyHistory,
SubmitPolicy, VerifyPolicy and the observation tools); each tool call is one
D-Bus call made by the agent with the agent's own (unprivileged) identity.

- Model and base URL are configurable; the ``anthropic`` SDK also honours
  ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY``.
- The fixed system prompt and the tool list are cache breakpoints
  (``cache_control``), so turns after the first read them from the cache.
- Every response's ``usage`` is charged to the run's :class:`Budget`
  (tokens, dollars, wall time); once spent the planner raises
  :class:`BudgetSpent` *before* running the tool calls of that response.
- A tool call whose arguments do not match the declared schema, an unknown
  tool, a policy selecting processes outside the agent's scope, and a daemon
  error all go back to the model as a ``tool_result`` with ``is_error``.
- Deployment tokens never reach the model: the agent keeps them.
- Every request, response and tool call is written to the transcript.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from typing import Any

from schedcp_agent import document, synth
from schedcp_agent.budget import Budget, BudgetSpent
from schedcp_agent.client import DaemonError, SchedcpClient, decode
from schedcp_agent.execute import not_authorized
from schedcp_agent.observe import WorkloadProfile
from schedcp_agent.plan import RUNGS, Attempt, Candidate
from schedcp_agent.tools import BY_NAME, check_arguments, claude_tools
from schedcp_agent.transcript import Transcript

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_MAX_TOKENS = 2048
MAX_TURNS = 12
MAX_RESULT_CHARS = 12000
_ID = re.compile(r"\b[0-9a-f]{8,64}\b")
_RUNG = re.compile(r"RUNG:\s*(\w+)")

SYSTEM_PROMPT = """\
You are the planning role of schedcp-agent, which tunes Linux CPU scheduling
through the schedcpd daemon.  You never have root: every action is a tool
call (a D-Bus method) that the daemon authorizes, verifies and can revert.

Your job: choose or write ONE T1 policy (TOML) for the target processes you
are given, for the stated goal, and get it through the verifier.

Decision ladder (cheapest first): configure an existing repository policy
(ListPolicies, GetPolicy: bind its groups to the targets, choose parameters);
patch one (change knobs the author did not foresee); compose a new one from
primitives only when nothing fits.  Prefer policies in state "proven" and
avoid any whose GetPolicyHistory shows antipatterns on a similar workload.

T1 format: [policy] name (a-z0-9-), description, workloads, tags;
[[group]] with name, match = { pid = [...] } (ONLY the target pids you are
given), descendants (bool), task = { policy = other|batch|idle, nice,
slice_us (100..100000), timer_slack_ns } and/or cgroup = { shares, idle,
quota_us, period_us, cpus }.  Never select processes other than the targets.
io policies ([policy] subsystem = "io"): [[group]] with match = { pids = [...] }
and ioprio = { class = none|rt|be|idle, level = 0..7 }, optional throttle;
[[device]] tables (I/O scheduler, read_ahead_kb, nr_requests, tunables) are
machine-wide: only for the devices the user allowed (listed below, if any).
Multi-subsystem policies ([policy] subsystems = ["scheduler", "io"]) hold one
part per subsystem: [[scheduler.group]] (match pid) and [[io.group]] (match
pids); verified, deployed and rolled back as one.  ListPolicies shows each
policy's subsystem ("scheduler", "io", "scheduler+io"): io-protect-reads for
reads beside a bulk writer, io-batch-copy for an I/O-bound batch, database
for a target waiting both for a CPU and on the disk.

Steps: SubmitPolicy(document) returns an id; VerifyPolicy(id) returns the
report; fix findings and resubmit.  When a policy passed, answer (no tool
call) with a short rationale and the lines "POLICY: <id>" and
"RUNG: configure|patch|compose".  The agent then deploys it behind a canary
and reports the measured result; you may be asked for a next candidate.
Be brief: tokens cost money.
"""


def _block_param(block: Any) -> dict[str, Any]:
    """A response content block as a request content block."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return {"type": "text", "text": ""}


def scope_problem(text: str, allowed: set[int], devices: list[str] | None = None) -> str | None:
    """Why a document selects outside the agent's scope, or None if it does not.

    Every part of a multi-subsystem document is checked: each group selects
    only allowed pids, by its subsystem's pid selector (``pid`` for the
    scheduler, ``pids`` for io and dvfs); an io part's ``[[device]]`` tables
    (machine-wide) may name only ``devices`` (``--io-device``).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return f"not valid TOML: {err}"
    if not document.has_groups(doc):
        return ("it has no [[group]]: a policy without groups (a T2 sched_ext scheduler, "
                "[scx]) acts on the whole host, outside the targets; write a T1 policy with "
                "groups that select the targets by pid")
    single = document.subsystems(doc)[0]
    for name, g in document.groups(doc):
        sub = name.split("/", 1)[0] if "/" in name else single
        key = document.MATCH_KEY.get(sub, "pid")
        match = g.get("match", {}) if isinstance(g.get("match"), dict) else {}
        other = sorted(set(match) - {key})
        pids = match.get(key, [])
        pids = pids if isinstance(pids, list) else [pids]
        if other or not pids:
            return (f"group {name!r} selects by {other or 'nothing'}: select the targets by "
                    f"pid only (match = {{ {key} = [...] }} in a {sub} group)")
        outside = sorted(set(pids) - allowed)
        if outside:
            return f"group {name!r} selects pids outside the targets: {outside}"
    foreign = sorted(set(document.devices_of(doc)) - set(devices or []))
    if foreign:
        return (f"[[device]] {foreign}: device queue settings are machine-wide; the user "
                f"allowed {sorted(devices or []) or 'no device'} (--io-device): drop the "
                f"device table or name an allowed device")
    return None


def _neighbours(profile: WorkloadProfile) -> str:
    """The competitors outside the scope, and whether the model may select them."""
    if not profile.competitors:
        return ""
    brief = [{k: c.get(k) for k in ("pid", "comm", "cls", "cpu", "wait", "unit", "may_act")}
             for c in profile.competitors[:8]]
    rule = ("those with may_act true are among the targets (the user passed --may-act-on "
            "neighbours)" if profile.may_act_on_neighbours else
            "they are outside the scope: do not select them (the report proposes acting on "
            "them to the user)")
    return f"Competitors outside the scope: {json.dumps(brief)}; {rule}.\n"


def _io(profile: WorkloadProfile) -> str:
    """The targets' I/O evidence and the devices the model may tune."""
    if not profile.io:
        return ""
    return (f"Targets' I/O (GetSummary): {json.dumps(profile.io)}; devices whose queue "
            f"settings you may change: {profile.io_devices or 'none'}.\n")


def without_values(obj: Any) -> Any:
    """Feedback without its per-sample series (``values``): the model reads the
    medians and bands; hundreds of samples per figure would crowd out the rest
    of a truncated message."""
    if isinstance(obj, dict):
        return {k: without_values(v) for k, v in obj.items() if k != "values"}
    if isinstance(obj, list):
        return [without_values(v) for v in obj]
    return obj


class ClaudePlanner:
    """Planner backend driving a Claude model with the schedcpd tools."""

    name = "claude"

    def __init__(self, client: SchedcpClient, budget: Budget, transcript: Transcript,
                 model: str = DEFAULT_MODEL, base_url: str | None = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, api_key: str | None = None,
                 max_turns: int = MAX_TURNS, t2: bool = False, max_programs: int = 4) -> None:
        try:
            import anthropic
        except ImportError as err:  # the optional extra is not installed
            raise RuntimeError("the claude backend needs the anthropic SDK: "
                               "pip install 'schedcp[agent]'") from err
        self.client = client
        self.budget = budget
        self.transcript = transcript
        self.model = model
        self.max_tokens = max_tokens
        self.max_turns = max_turns
        self.sdk = anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key,
                                            max_retries=1, timeout=120.0)
        self.t2 = t2
        self.max_programs = max_programs
        self.tools = claude_tools("plan", cache=not t2)
        if t2:  # the agent-side program tool; the cache breakpoint stays on the last tool
            self.tools.append({**synth.PROGRAM_TOOL, "cache_control": {"type": "ephemeral"}})
        self.system = SYSTEM_PROMPT + (synth.SYSTEM_ADDENDUM if t2 else "")
        self.program_attempts: list[dict[str, Any]] = []
        """Every SubmitProgram call: the program's name, why it changed, what came back."""
        self.profile: WorkloadProfile | None = None
        self.messages: list[dict[str, Any]] = []
        self.submitted: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.verified: list[str] = []
        self.tool_calls = 0
        self.tool_errors = 0
        self.allowed: set[int] = set()
        self.devices: list[str] = []

    # -- conversation ------------------------------------------------------

    def _first_message(self, profile: WorkloadProfile) -> str:
        targets = [{"pid": t.pid, "comm": t.comm, "class": t.cls, "role": t.role,
                    "cpu": t.cpu} for t in profile.targets.values()]
        return (f"Goal: {profile.goal}.\nWorkload: {profile.text}\n"
                f"Shape: {profile.shape}; roles (group name -> pids): "
                f"{json.dumps(profile.roles)}\nTargets (the only pids you may select): "
                f"{json.dumps(targets)}\nEvidence: {json.dumps(profile.evidence[-8:])}\n"
                f"Host: {json.dumps(profile.summary)}\n{_neighbours(profile)}"
                f"{_io(profile)}"
                f"Find a policy, verify it, answer with POLICY: <id>.")

    @staticmethod
    def _attempt_message(last: Attempt) -> str:
        figures = {"deployment": last.execution,
                   "feedback": without_values({k: last.feedback.get(k)
                                               for k in ("notes", "metrics", "pids")
                                               if k in last.feedback})}
        return (f"The agent deployed {last.candidate.policy_id[:12]} ({last.candidate.base}): "
                f"{last.outcome}. {last.detail}\nThe deployment's final state (the circuit "
                f"breaker's trip, if any) and the feedback engine's figures: "
                f"{json.dumps(figures, default=str)[:4000]}\nPropose a different policy "
                f"(verify it) and "
                f"answer with POLICY: <id>, or answer GIVE UP if nothing else can help.")

    async def next_candidate(self, profile: WorkloadProfile,
                             attempts: list[Attempt]) -> Candidate | None:
        """Run the model until it names a verified policy; None when it gives up."""
        self.allowed = set(profile.targets)
        self.devices = list(profile.io_devices)
        self.profile = profile
        if not self.messages:
            self.messages.append({"role": "user", "content": self._first_message(profile)})
        elif attempts:
            self.messages.append({"role": "user",
                                  "content": self._attempt_message(attempts[-1])})
        text = await self._converse()
        if "GIVE UP" in text:
            return None
        return self._choose(text)

    async def _converse(self) -> str:
        system = [{"type": "text", "text": self.system, "cache_control": {"type": "ephemeral"}}]
        for _turn in range(self.max_turns):
            self.budget.check()
            max_tokens = self.budget.output_allowance(self.model, self.max_tokens)
            self.transcript.write("request", model=self.model, max_tokens=max_tokens,
                                  messages=self.messages[-2:], n_messages=len(self.messages))
            response = await self.sdk.messages.create(
                model=self.model, max_tokens=max_tokens, system=system,  # type: ignore[arg-type]
                tools=self.tools, messages=self.messages)  # type: ignore[arg-type]
            cost = self.budget.add(self.model, response.usage)
            content = [_block_param(b) for b in response.content]
            self.transcript.write("response", stop_reason=response.stop_reason, content=content,
                                  usage=response.usage.model_dump(), usd=round(cost, 6))
            self.messages.append({"role": "assistant", "content": content})
            why = self.budget.exhausted()
            if why:
                self.transcript.write("stop", reason=why)
                raise BudgetSpent(why)
            uses = [b for b in response.content if b.type == "tool_use"]
            if response.stop_reason != "tool_use" or not uses:
                return "\n".join(b.text for b in response.content if b.type == "text")
            results = [await self._run_tool(b.id, b.name, b.input) for b in uses]
            self.messages.append({"role": "user", "content": results})
        raise BudgetSpent(f"the model used {self.max_turns} turns without naming a policy")

    async def _run_tool(self, use_id: str, name: str, args: Any) -> dict[str, Any]:
        self.tool_calls += 1
        result = await self._tool_value(name, args)
        is_error = isinstance(result, _ToolError)
        if name in ("GetFeedback", "GetFeedbackFor") and not is_error:
            result = without_values(result)  # the series: for the agent's rank test
        text = str(result) if is_error else json.dumps(result)[:MAX_RESULT_CHARS]
        if is_error:
            self.tool_errors += 1
        self.transcript.write("tool", name=name, input=args, is_error=is_error,
                              result=text[:2000])
        out: dict[str, Any] = {"type": "tool_result", "tool_use_id": use_id, "content": text}
        if is_error:
            out["is_error"] = True
        return out

    async def _tool_value(self, name: str, args: Any) -> Any:
        if name == "SubmitProgram" and self.t2:
            return await self._program(args)
        t = BY_NAME.get(name)
        if t is None or "plan" not in t.roles:
            return _ToolError(f"unknown tool {name!r}; available: "
                              f"{[x['name'] for x in self.tools]}")
        try:
            body = check_arguments(t, args)
        except ValueError as err:
            return _ToolError(f"invalid arguments: {err}")
        if name == "SubmitPolicy" and not (self.t2 and synth.is_t2(body[0])):
            # A T2 document (raw C or a program) acts on the whole host: allowed only
            # when T2 is (--track T2, or the host offers sched_ext); the daemon's
            # schema and static rules apply to it as to any policy.
            problem = scope_problem(body[0], self.allowed, self.devices)
            if problem:
                return _ToolError(f"refused by the agent: {problem}; allowed pids: "
                                  f"{sorted(self.allowed)}")
        try:
            value = decode(t, await self.client.call_raw(t, body))
        except DaemonError as err:
            if err.short == "AccessDenied":
                raise not_authorized(err) from err
            return _ToolError(f"{err.short}: {err.message}")
        if name == "SubmitPolicy":
            self.submitted[str(value)] = body[0]
        if name == "VerifyPolicy":
            token, report = value
            pid = str(report.get("policy_id", body[0])) if isinstance(report, dict) else body[0]
            if token:
                self.tokens[pid] = token
                self.verified.append(pid)
            return {"passed": bool(token), "token": "<kept by the agent>" if token else "",
                    "report": report}
        return value

    async def _program(self, args: Any) -> Any:
        """SubmitProgram: check it is a program, wrap, submit, verify; the report goes back."""
        n = len(self.program_attempts) + 1
        record: dict[str, Any] = {"attempt": n}
        self.program_attempts.append(record)
        if not isinstance(args, dict) or set(args) != {"program", "name", "why"}:
            record["outcome"] = "refused by the agent: arguments must be program, name, why"
            return _ToolError(f"invalid arguments: SubmitProgram takes program, name and why; "
                              f"got {sorted(args) if isinstance(args, dict) else args!r}")
        record.update(name=str(args["name"])[:80], why=str(args["why"])[:600])
        if n > self.max_programs:
            record["outcome"] = "refused by the agent: program limit reached"
            return _ToolError(f"the limit of {self.max_programs} programs per run is reached: "
                              "answer with the best verified POLICY: <id>, or GIVE UP")
        problem = synth.program_problem(args["program"])
        if problem:  # never submitted, never executed
            record["outcome"] = f"refused by the agent (not submitted): {problem}"
            return _ToolError(f"refused by the agent, not submitted: {problem}")
        assert self.profile is not None
        text = synth.wrap(args["program"], str(args["name"]), self.profile, str(args["why"]))
        try:
            policy_id = str(await self.client.call("SubmitPolicy", text))
        except DaemonError as err:
            if err.short == "AccessDenied":
                raise not_authorized(err) from err
            record["outcome"] = f"refused at submission: {err.short}: {err.message}"[:1000]
            return _ToolError(f"SubmitPolicy refused the program ({err.short}): {err.message}")
        self.submitted[policy_id] = text
        record["policy_id"] = policy_id
        token, report = await self.client.call("VerifyPolicy", policy_id)
        stages = report.get("stages", []) if isinstance(report, dict) else []
        if token:
            self.tokens[policy_id] = token
            self.verified.append(policy_id)
        failed = [s["stage"] for s in stages if not s.get("passed") and not s.get("skipped")]
        record["outcome"] = "passed every stage" if token else \
            f"refused by the verifier at {', '.join(failed) or '?'}"
        record["findings"] = [f"{f.get('code')}: {f.get('message')}"[:300]
                              for s in stages for f in s.get("findings", [])
                              if f.get("severity", "error") == "error"][:6]
        return {"policy_id": policy_id, "passed": bool(token),
                "token": "<kept by the agent>" if token else "",
                "stages": [{k: s.get(k) for k in ("stage", "passed", "verdict", "skipped",
                                                  "findings")} for s in stages]}

    def _choose(self, text: str) -> Candidate | None:
        named = [i for m in _ID.findall(text) for i in self.submitted if i.startswith(m)]
        pool = named or self.verified[-1:] or list(self.submitted)[-1:]
        if not pool:
            return None
        policy_id = pool[-1]
        rung = _RUNG.search(text)
        document = self.submitted[policy_id]
        base = str(tomllib.loads(document).get("policy", {}).get("name", "model"))
        cand = Candidate(base=base, rung=rung.group(1) if rung and rung.group(1) in RUNGS
                         else "patch", text=document,
                         reasoning=" ".join(text.split())[:600] or "(no rationale given)",
                         policy_id=policy_id, token=self.tokens.pop(policy_id, ""))
        cand.notes.append(f"proposed by {self.model}")
        return cand


class _ToolError(str):
    """A tool result that goes back to the model with is_error."""
