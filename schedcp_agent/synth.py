"""Synthesis: T2 (sched_ext) programs in the scheduler language, written by the agent.

Where a program comes from:

- the Claude backend: the model calls the agent-side tool ``SubmitProgram``
  (:data:`PROGRAM_TOOL`) with the program text; the agent checks that the
  reply *is* a program (:func:`program_problem`: TOML with ``[scheduler]`` and
  ``[[class]]``, not C, at most :data:`MAX_PROGRAM_BYTES`) -- anything else goes
  back to the model as an error and never reaches the daemon -- wraps it in a
  T2 policy (:func:`wrap`), submits and verifies it, and returns the whole
  verifier report (schema errors with lines, static findings, the kernel
  verifier's log, dynamic metrics) to the model;
- the offline planner: :func:`derived_candidate` (``scxlang.derive`` from the
  workload profile by rules).

Either way the program is a policy version in the repository (provenance
``agent``, tags ``agent``, ``synthesized``, ``profile:<goal>.<shape>``), and
:func:`repository_hit` reuses one that passed every stage for the same profile
before anything new is written.  Whether the host can run it is read from
GetStatus (:func:`sched_ext_offer`): the verifier runs T2 policies in a
micro-VM, so a program can be verified on a host whose kernel has no
sched_ext, but not deployed there.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from typing import Any

from schedcp_agent.observe import WorkloadProfile
from schedcp_agent.plan import Candidate, RepositoryView, reuse_check

_LOGGER = logging.getLogger(__name__)

MAX_PROGRAM_BYTES = 16 * 1024
_NAME = re.compile(r"[^a-z0-9]+")
_C_HINTS = ("#include", "SEC(", "BPF_STRUCT_OPS", "s32 BPF", "void BPF", "{\n    return")

PROGRAM_TOOL: dict[str, Any] = {
    "name": "SubmitProgram",
    "description": (
        "Write a sched_ext scheduler in schedcp's scheduler language (TOML: [scheduler] name, "
        "order = [class names]; optional [params.X] {default,min,max}; [[class]] entries with "
        "name, match (comm, cmdline, cgroup, uid, wake_interval_us_max, avg_run_us_max, "
        "cpu_pct_min; the last class has none: the catch-all), order (fifo|vtime|deadline|sjf|"
        "ljf), slice_us, preempt, placement, guard = { max_wait_us | min_share_pct } "
        "(mandatory)). The agent wraps it in a T2 policy, submits and verifies it (schema, "
        "static wait bounds, kernel verifier and a dynamic test in a micro-VM) and returns "
        "the verifier's report. Fix what it names and submit again."),
    "input_schema": {
        "type": "object",
        "properties": {
            "program": {"type": "string", "description": "the program (TOML text)"},
            "name": {"type": "string", "description": "policy name, a-z0-9-"},
            "why": {"type": "string",
                    "description": "what this version changes and why (for the transcript)"},
        },
        "required": ["program", "name", "why"],
        "additionalProperties": False,
    },
}

SYSTEM_ADDENDUM = """
T2 (sched_ext) is allowed in this run: besides T1 you may write a whole
scheduler in the scheduler language with SubmitProgram(program, name, why)
(docs/scheduler-language.md).  It acts on the whole host.  Every class needs
a starvation guard; the static stage refuses a class without a bounded wait.
Read the report SubmitProgram returns, fix what it names and submit again
(the number of programs is limited).  When one passed, answer with
"POLICY: <id>" and "RUNG: synthesize".
"""


def program_problem(program: Any) -> str | None:
    """Why ``program`` is not a scheduler-language program to submit, or None."""
    if not isinstance(program, str) or not program.strip():
        return "the program must be a non-empty string of TOML"
    size = len(program.encode())
    if size > MAX_PROGRAM_BYTES:
        return f"the program is {size} bytes, over the limit of {MAX_PROGRAM_BYTES} bytes"
    if any(h in program for h in _C_HINTS):
        return ("this looks like C, not a scheduler-language program: write TOML with "
                "[scheduler] and [[class]] (raw BPF C goes through SubmitPolicy as a T2 "
                "policy under the static rules)")
    if "'''" in program:
        return "the program must not contain ''' (it is embedded in a literal TOML string)"
    try:
        doc = tomllib.loads(program)
    except tomllib.TOMLDecodeError as err:
        return f"not a program: not valid TOML: {err}"
    if not isinstance(doc.get("scheduler"), dict) or not isinstance(doc.get("class"), list):
        return "not a program: it needs a [scheduler] table and [[class]] entries"
    return None


def _value(value: Any) -> str:
    return json.dumps(value)


def wrap(program: str, name: str, profile: WorkloadProfile, why: str,
         origin: str = "synthesized") -> str:
    """The T2 policy document that carries ``program``, tagged for repository search."""
    slug = _NAME.sub("-", name.lower()).strip("-")[:40] or "program"
    meta = {
        "name": f"agent-scxl-{slug}"[:63],
        "track": "T2",
        "description": (f"Scheduler-language program {origin} by schedcp-agent for: "
                        f"{profile.text}. {' '.join(why.split())}")[:1000],
        "workloads": [profile.text],
        "tags": ["sched_ext", "scxlang", "agent", origin, f"profile:{profile.key}",
                 f"base:{slug}", f"goal:{profile.goal}"],
    }
    lines = ["[policy]"] + [f"{k} = {_value(v)}" for k, v in meta.items()]
    lines += ["", "[scx]", "program = '''", program.strip("\n"), "'''"]
    return "\n".join(lines) + "\n"


def is_t2(text: str) -> bool:
    """Whether a policy document is a T2 (sched_ext) policy."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return doc.get("policy", {}).get("track") == "T2" or "scx" in doc


def sched_ext_offer(status: dict[str, Any]) -> tuple[bool, str]:
    """(whether the host can run a T2 scheduler, why) from a GetStatus answer."""
    caps = status.get("subsystems", {}).get("scheduler", {}).get("capabilities", {})
    cap = caps.get("sched_ext")
    if not isinstance(cap, dict):
        return False, "schedcpd reports no sched_ext capability"
    if not cap.get("available"):
        return False, str(cap.get("reason", ""))
    # A kernel that runs sched_ext is not enough: the program must be verified
    # (clang, the micro-VM).  A daemon older than this capability says nothing.
    verify = caps.get("sched_ext.verify")
    if isinstance(verify, dict) and not verify.get("available"):
        return False, f"sched_ext is available, but {verify.get('reason', '')}"
    return True, str(cap.get("reason", ""))


def _comms(profile: WorkloadProfile) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for role, pids in profile.roles.items():
        names = [profile.targets[p].comm for p in pids if p in profile.targets]
        out[role] = sorted({n for n in names if n})
    return out


def derived_candidate(profile: WorkloadProfile) -> Candidate:
    """The offline planner's program: ``scxlang.derive`` from the profile by rules."""
    from plugins.scheduler.scxlang.derive import derive

    derived = derive(profile.shape, profile.goal, _comms(profile))
    why = "; ".join(derived.rules)
    text = wrap(derived.text, derived.program["scheduler"]["name"].replace("_", "-"), profile,
                f"Rules: {why}.", origin="derived")
    return Candidate(f"derived-{profile.shape}", "synthesize", text,
                     f"derived a sched_ext program from the profile by rules: {why}",
                     notes=[f"rule: {r}" for r in derived.rules])


async def repository_hit(repo: RepositoryView, profile: WorkloadProfile) -> Candidate | None:
    """A T2 program the agent wrote for the same profile that passed every stage.

    "Worked" means: its version reached ``verified`` (all four stages) or
    ``proven`` (deployed and measured good), and :func:`plan.reuse_check`
    passes with or without a deployment: no antipattern, its last judged
    deployment outcome (if any) is ``active``, and the agent's latest
    verdict (if any) ``improved``.
    """
    tag = f"profile:{profile.key}"
    found = [p for p in await repo.search(f"agent scxlang {profile.shape.replace('-', ' ')}")
             if tag in p.get("tags", []) and p.get("track") == "T2"
             and "agent" in p.get("tags", [])]
    found.sort(key=lambda p: (p.get("state") == "proven", p.get("updated", 0.0)), reverse=True)
    for p in found:
        if p.get("state") not in ("verified", "proven"):
            continue
        check = reuse_check(await repo.history(p["id"]), deployed=False)
        if check.refused:
            _LOGGER.info("not reusing %s (%s): %s", p["name"], p["id"][:12], check.refused)
            continue
        full = await repo.get(p["id"])
        return Candidate(p["name"], "reuse", full["document"],
                         f"repository hit: the program {p['name']} ({p['id'][:12]}, state "
                         f"{p['state']}, {check.active} active deployment(s), agent's last "
                         f"verdict {check.verdict or 'none'}) passed every "
                         f"stage for the same profile ({profile.key}); reused before "
                         "writing a new one", source_id=p["id"],
                         notes=[f"reused {p['state']} T2 program {p['id'][:12]}"])
    return None
