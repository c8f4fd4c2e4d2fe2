"""The T2 track's arms, verified on this host: one signed token per deployment in the guest.

- ``default``: EEVDF, nothing deployed (the baseline);
- ``policy:<name>``: a T2 built-in of the daemon (policies/t2: ``scx-vtime``,
  the scheduler-language programs ``scxl-*``), as the host daemon's
  repository holds it;
- ``agent``: the offline agent's pick for the workload: the program
  :func:`schedcp_agent.synth.derived_candidate` derives by rules from the
  workload's profile (its shape and goal, declared by the workload in
  :mod:`schedcp_bench.t2`, since the agent cannot observe a workload that
  runs inside the guest from here).

Each arm's policy is submitted to the host's schedcpd under a bench name
(``bench-<workload>-<base>``, no ``[[group]]``s: the canary is the guest's
whole machine, as for any T2 policy without targets) and verified once per
window it serves: a token is used once.  The verifier runs all four stages
(the kernel and dynamic stages in its micro-VM); the token binds the object
it loaded.  Objects of scheduler-language programs and C sources go to the
guest with the job (``verified/<object_sha256>.bpf.o``), so the guest's
daemon deploys exactly the verified bytes without a compiler.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.observe import WorkloadProfile
from schedcp_bench.arms import builtin_policies

_NAME_LINE = re.compile(r'^name\s*=\s*"[^"]*"\s*$', re.MULTILINE)


class T2ArmError(Exception):
    """An arm could not be verified (unknown policy, verifier refused, object not found)."""


@dataclass
class VerifiedArm:
    """One arm for one workload: the policy text the guest submits and its tokens."""

    spec: str
    workload: str
    text: str
    tokens: list[str] = field(default_factory=list)
    objects: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


RETRIES = 2
"""Verifications tried again when what failed was the shared host, not the policy."""


def environmental(report: dict[str, Any]) -> bool:
    """Whether a refusal is the shared host's doing: only the dynamic stage failed (it
    measures under foreign load), or the verifier's micro-VM did not boot in time."""
    failed = [s for s in report.get("stages", []) if not s.get("passed") and not s.get("skipped")]
    codes = {f.get("code") for s in failed for f in s.get("findings", [])
             if f.get("severity", "error") == "error"}
    return bool(failed) and ({s.get("stage") for s in failed} == {"dynamic"}
                             or codes == {"vm-failed"})


def claims(token: str) -> dict[str, Any]:
    """A token's claims, unverified (for its ``artifact`` binding)."""
    body = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return data


def renamed(text: str, name: str) -> str:
    """``text`` with its ``[policy]`` name replaced (the first ``name = "..."`` line)."""
    out, count = _NAME_LINE.subn(f'name = "{name}"', text, count=1)
    if count != 1 or tomllib.loads(out).get("policy", {}).get("name") != name:
        raise T2ArmError(f"cannot rename the policy to {name!r}: no [policy] name line first")
    return out


def agent_text(workload: str, shape: str, goal: str, description: str) -> tuple[str, str]:
    """The offline agent's program for a workload profile: (policy text, reasoning)."""
    from schedcp_agent.synth import derived_candidate

    profile = WorkloadProfile(shape=shape, goal=goal, goal_source="benchmark",
                              text=f"{workload}: {description}")
    cand = derived_candidate(profile)
    return cand.text, cand.reasoning


def find_object(objects_dir: Path, digest: str) -> Path | None:
    """The object the verifier loaded, by its sha256 (the micro-VM cache keeps them)."""
    for path in sorted(objects_dir.glob("*.bpf.o")):
        if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return path
    return None


async def policy_text(client: SchedcpClient, spec: str, workload: str, shape: str,
                      goal: str, description: str) -> tuple[str, dict[str, Any]]:
    """The bench version of an arm's policy for ``workload`` and what it is."""
    if spec == "agent":
        text, why = agent_text(workload, shape, goal, description)
        base = str(tomllib.loads(text)["policy"]["name"])
        info: dict[str, Any] = {"backend": "offline", "profile": f"{goal}.{shape}",
                                "base": base, "reasoning": why}
    elif spec.startswith("policy:"):
        base = spec[7:]
        builtin = await builtin_policies(client)
        if base not in builtin or builtin[base].get("track") != "T2":
            known = sorted(n for n, p in builtin.items() if p.get("track") == "T2")
            raise T2ArmError(f"arm {spec}: no T2 built-in {base!r} (known: "
                             f"{', '.join(known) or 'none'})")
        text = str((await client.call("GetPolicy", builtin[base]["id"]))["document"])
        info = {"base": base, "source": "built-in", "policy_id": builtin[base]["id"]}
    else:
        raise T2ArmError(f"arm {spec!r}: T2 arms are default, policy:NAME and agent")
    return renamed(text, f"bench-{workload}-{base}"[:60]), info


async def verify(client: SchedcpClient, arm: VerifiedArm, count: int,
                 objects_dir: Path) -> None:
    """Submit ``arm.text`` and verify it ``count`` times (a token each)."""
    policy_id = str(await client.call("SubmitPolicy", arm.text))
    arm.info["policy_id"] = policy_id
    arm.info["verify_seconds"] = []
    for _ in range(count):
        t0 = time.monotonic()
        token, report = "", {}
        for attempt in range(RETRIES + 1):
            token, report = await client.call("VerifyPolicy", policy_id)
            if token or not environmental(report) or attempt == RETRIES:
                break
        arm.info["verify_seconds"].append(round(time.monotonic() - t0, 1))
        if not token:
            findings = [f"{s.get('stage')}: {f.get('code')}: {f.get('message')}"
                        for s in report.get("stages", []) for f in s.get("findings", [])
                        if f.get("severity", "error") == "error"]
            raise T2ArmError(f"verifier refused {arm.spec} for {arm.workload}: "
                             f"{'; '.join(findings)[:600]}")
        arm.tokens.append(token)
        digest = (claims(token).get("artifact") or {}).get("object_sha256")
        if not digest:
            raise T2ArmError(f"{arm.spec}: the token binds no object (not a T2 token?)")
        if digest not in arm.objects:
            found = find_object(objects_dir, digest)
            scheduler = tomllib.loads(arm.text).get("scx", {}).get("scheduler")
            if found is None and not scheduler:
                raise T2ArmError(f"{arm.spec}: the object the verifier loaded "
                                 f"({digest[:12]}) is not in {objects_dir}")
            if found is not None:
                arm.objects[digest] = found
        arm.info["object_sha256"] = digest


async def verify_all(client: SchedcpClient, specs: list[str],
                     workloads: dict[str, tuple[str, str, str]], reps: int,
                     objects_dir: Path) -> dict[tuple[str, str], VerifiedArm]:
    """Every (arm, workload) but ``default``, ``reps`` tokens each.

    ``workloads`` maps a name to (shape, goal, description).  An arm that
    cannot be verified raises :class:`T2ArmError` (the run cannot compare it).
    """
    out: dict[tuple[str, str], VerifiedArm] = {}
    for wl, (shape, goal, description) in workloads.items():
        for spec in specs:
            if spec == "default":
                continue
            try:
                text, info = await policy_text(client, spec, wl, shape, goal, description)
                arm = VerifiedArm(spec, wl, text, info=info)
                await verify(client, arm, reps, objects_dir)
            except DaemonError as err:
                raise T2ArmError(f"{spec} for {wl}: {err}") from err
            out[(spec, wl)] = arm
    return out
