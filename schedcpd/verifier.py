"""The Execution Verifier: the gate between an idea and the kernel.

A stored policy version goes through four stages; each yields a structured
result ``{"stage", "passed", "verdict", "skipped", "findings", "seconds"}``
where a finding is ``{"code", "severity", "field", "message"}``, plus
``evidence`` where it has figures (never a grep of some tool's stderr).
``verdict`` is ``passed``, ``failed``, ``skipped`` or ``inconclusive``: a
stage that measured but could not tell (its ``inconclusive`` finding says
why) fails closed, and says so rather than pretending to a verdict:

1. ``schema`` — the subsystem's schema: allow-listed knobs, types, ranges,
   no free-form commands or paths outside allowed roots
   (``schedcp_validate``);
2. ``static`` — scheduling logic: starvation risks, unbounded real-time,
   CPU sets that leave a task nowhere to run, starving quotas, conflicts
   with active policies (``schedcp_static_check``);
3. ``kernel`` — load BPF artifacts into the kernel verifier without
   attaching (``schedcp_kernel_check``; T2, a T1 policy has none and the
   stage is skipped);
4. ``dynamic`` — run the policy on a synthetic workload in a sandbox for a
   bounded time and check every task progresses and guards hold
   (``schedcp_dynamic_check``).

A stage the subsystem does not implement fails closed.  Only when every
stage passes is a signed deployment token issued and the version promoted
to ``verified``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from schedcpd import policy_parts
from schedcpd.errors import Conflict, NotSupported
from schedcpd.payloads import Finding, Severity
from schedcpd.plugins import PluginHost
from schedcpd.ranges import MAX_DIMENSIONS, RangeCache, box_of, probe_points, template_digest
from schedcpd.reports import ReportStore
from schedcpd.repository import Repository, parse_document, policy_scope
from schedcpd.safety_events import NO_EVENTS, SafetyEvents
from schedcpd.tokens import ARTIFACT_CLAIMS, TokenAuthority, digest_of

_LOGGER = logging.getLogger(__name__)

STAGES = ("schema", "static", "kernel", "dynamic")
DEFAULT_DYNAMIC_SECONDS = 3.0
# How often an inconclusive dynamic stage is measured before the verdict stays so.
DYNAMIC_ATTEMPTS = 2

ActivePolicies = Callable[[], Awaitable[list[dict[str, Any]]]]


async def _no_active() -> list[dict[str, Any]]:
    return []


def _finding(code: str, message: str, field: str = "",
             severity: Severity = "error") -> Finding:
    return {"code": code, "severity": severity, "field": field, "message": message}


def _stage(name: str, start: float, findings: list[Any] | None,
           skipped: str = "") -> dict[str, Any]:
    findings = findings or []
    passed = not any(f.get("severity", "error") == "error" for f in findings)
    if skipped:
        verdict = "skipped"
    elif any(f.get("code") == "inconclusive" for f in findings):
        verdict = "inconclusive"
    else:
        verdict = "passed" if passed else "failed"
    return {
        "stage": name,
        "passed": passed,
        "verdict": verdict,
        "skipped": skipped,
        "findings": findings,
        "seconds": round(time.monotonic() - start, 4),
    }


def artifact_of(report: dict[str, Any]) -> dict[str, str] | None:
    """The artifact the kernel stage loaded (an ``artifact`` finding), for the token.

    A T2 policy's kernel stage reports the SHA-256 of the BPF object it
    loaded and of the kernel BTF it loaded it against; the token binds them
    so the deploying host loads exactly that object on that kernel.
    """
    for stage in report.get("stages", []):
        if stage.get("stage") != "kernel":
            continue
        for finding in stage.get("findings", []):
            if finding.get("code") == "artifact" and isinstance(finding.get("binding"), dict):
                binding = finding["binding"]
                return {k: str(binding.get(k, "")) for k in ARTIFACT_CLAIMS}
    return None


class Verifier:
    """Runs the stages and issues tokens."""

    def __init__(self, plugins: PluginHost, repository: Repository, tokens: TokenAuthority,
                 active_policies: ActivePolicies | None = None,
                 dynamic_seconds: float = DEFAULT_DYNAMIC_SECONDS,
                 reports: ReportStore | None = None,
                 ranges: RangeCache | None = None) -> None:
        self._plugins = plugins
        self.reports = reports
        """Where reports of passed verifications are kept (by the digest a token signs)."""
        self._repo = repository
        self._tokens = tokens
        # Policies deployed now ({"policy_id", "name", "document"}), for conflicts.
        self._active = active_policies or _no_active
        self.dynamic_seconds = dynamic_seconds
        self._running: set[str] = set()
        self.ranges = ranges
        """Verified parameter ranges (None: range verification is off)."""
        # One dynamic test at a time: two sandboxes (or micro-VMs) on one host
        # would each measure the other's load and blame it on their policy.
        self._dynamic = asyncio.Lock()
        self.events: SafetyEvents = NO_EVENTS
        """Told of every verification that ends (the daemon's metrics)."""

    async def verify(self, policy_id: str, uid: int,
                     active: list[dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
        """Verify the stored version; return (token or "", report).

        ``active``: the policies deployed now (``policy_id``, ``name``,
        ``document``) that stage 2 checks for conflicts; by default those of
        the ``active_policies`` callable given at construction.
        """
        policy = await self._repo.get(policy_id)
        if policy["state"] == "retired":
            raise Conflict(f"policy {policy['id'][:12]} is retired")
        if policy["id"] in self._running:
            raise Conflict(f"policy {policy['id'][:12]} is being verified already")
        self._running.add(policy["id"])
        try:
            if active is None:
                active = await self._active()
            report = await self._run(policy, active)
        except Exception:
            self.events.verification(policy["subsystem"], "error", [])
            raise
        finally:
            self._running.discard(policy["id"])
        token = ""
        if report["passed"]:
            text = json.dumps(report, sort_keys=True)
            report_digest = digest_of(text)
            if self.reports is not None:  # kept before a token can name it
                await self.reports.keep(text, policy["id"], uid)
            token = await self._tokens.issue(
                policy_id=policy["id"], policy_digest=digest_of(policy["document"]),
                subsystem=policy["subsystem"], scope=report["scope"],
                report_digest=report_digest, uid=uid, artifact=artifact_of(report),
            )
            if policy["state"] == "candidate":
                await self._repo.set_state(policy["id"], "verified")
            dynamic = report["stages"][-1]
            if self.ranges is not None and "range" in dynamic and "covered_by" not in dynamic:
                rng = dynamic["range"]
                doc = parse_document(policy["document"], policy["id"][:12])
                self.ranges.remember(rng["template_digest"], box_of(doc), report_digest,
                                     policy["id"])
        self.events.verification(policy["subsystem"], "passed" if report["passed"] else "failed",
                                 report["stages"])
        _LOGGER.info("verification of %s (%s) for uid %d: %s", policy["name"],
                     policy["id"][:12], uid, "passed" if report["passed"] else
                     "failed at " + ", ".join(s["stage"] for s in report["stages"]
                                              if not s["passed"]))
        return token, report

    async def _run(self, policy: dict[str, Any],
                   active: list[dict[str, Any]]) -> dict[str, Any]:
        subsystem = policy["subsystem"]
        doc = parse_document(policy["document"], policy["id"][:12])
        # One part per subsystem (a single-subsystem policy is one part):
        # each stage asks every part's plugin, and passes only if all do.
        parts = policy_parts.split(doc, subsystem, policy["id"][:12])
        stages: list[dict[str, Any]] = []

        start = time.monotonic()
        findings = []
        for part in parts:
            found = self._plugins.call_first("schedcp_validate", subsystem=part.subsystem,
                                             policy=part.doc)
            if found is None:
                found = [_finding("no-subsystem", f"no enabled subsystem {part.subsystem!r}",
                                  "policy.subsystems" if part.qualified
                                  else "policy.subsystem")]
                part = replace(part, qualified=False)  # the field is the document's own
            findings += [policy_parts.in_part(f, part) for f in found]
        stages.append(_stage("schema", start, findings))

        if stages[-1]["passed"]:
            start = time.monotonic()
            findings = []
            others = [p for p in active if p.get("policy_id") != policy["id"]]
            for part in parts:
                found = self._plugins.call_first(
                    "schedcp_static_check", subsystem=part.subsystem, policy=part.doc,
                    active=policy_parts.active_for(
                        part.subsystem, others,  # type: ignore[arg-type]
                        lambda text: parse_document(text, "active policy")))
                if found is None:
                    found = [_finding("no-static-check",
                                      f"subsystem {part.subsystem!r} offers no static analysis")]
                findings += [policy_parts.in_part(f, part) for f in found]
            stages.append(_stage("static", start, findings))

        if all(s["passed"] for s in stages):
            start = time.monotonic()
            if policy["track"] == "T1":
                stages.append(_stage("kernel", start, [], skipped="T1 policy: no BPF artifacts"))
            else:
                # Load without attaching (the scheduler plugin: in its micro-VM).
                try:
                    findings = await asyncio.to_thread(
                        self._plugins.call_first, "schedcp_kernel_check", subsystem=subsystem,
                        policy=doc)
                except NotSupported as err:
                    findings = [_finding("unsupported", str(err))]
                if findings is None:
                    findings = [_finding("unsupported-track", f"{policy['track']} policies "
                                         f"need a kernel-verifier stage; subsystem "
                                         f"{subsystem!r} offers none")]
                stages.append(_stage("kernel", start, findings))

        if all(s["passed"] for s in stages):
            if len(parts) == 1 and not parts[0].qualified:
                stages.append(await self._dynamic_stage(policy, doc))
            else:
                stages.append(await self._dynamic_parts(parts))

        for name in STAGES[len(stages):]:
            stages.append({"stage": name, "passed": False, "verdict": "skipped",
                           "skipped": "an earlier stage failed", "findings": [],
                           "seconds": 0.0})
        return {
            "policy_id": policy["id"],
            "name": policy["name"],
            "subsystem": subsystem,
            "track": policy["track"],
            "passed": all(s["passed"] for s in stages),
            "stages": stages,
            "scope": policy_scope(doc),
            "time": time.time(),
        }

    async def _dynamic_parts(self, parts: list[policy_parts.Part]) -> dict[str, Any]:
        """The dynamic stage of a multi-subsystem policy: each part's test, in order.

        Each part is tested by its own plugin's sandbox (one at a time, as
        any two dynamic tests); the stage passes only if every part does,
        and stops at the first part that does not (``parts`` says which ran).
        """
        start = time.monotonic()
        findings: list[dict[str, Any]] = []
        runs = []
        for part in parts:
            run = await self._dynamic_run(part.subsystem, part.doc)
            findings += [policy_parts.in_part(f, part) for f in run["findings"]]
            runs.append({"subsystem": part.subsystem, "verdict": run["verdict"],
                         "seconds": run["seconds"], "attempts": run["attempts"]})
            if run["verdict"] != "passed":
                break
        return {**_stage("dynamic", start, findings), "parts": runs}

    async def _dynamic_stage(self, policy: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        """The dynamic stage: once, or over a parameter range (its corners and centre)."""
        box = box_of(doc) if self.ranges is not None and policy["track"] == "T1" else {}
        if not box or len(box) > MAX_DIMENSIONS:
            return await self._dynamic_run(policy["subsystem"], doc)
        assert self.ranges is not None
        template = template_digest(doc, box)
        covered = self.ranges.covering(doc)
        if covered is not None:
            start = time.monotonic()
            stage = _stage("dynamic", start, [_finding(
                "range-covered", f"covered by the verified range of "
                f"{covered.policy_id[:12]} (its corners and centre passed; report "
                f"{covered.report_digest[:12]})", "parameters", severity="info")])
            return {**stage, "covered_by": covered.as_dict()}
        start = time.monotonic()
        findings: list[dict[str, Any]] = []
        points = []
        for point, variant in probe_points(doc, box):
            run = await self._dynamic_run(policy["subsystem"], variant)
            where = ", ".join(f"{k}={v:g}" for k, v in point.items())
            findings += [{**f, "message": f"at {where}: {f.get('message')}"}
                         for f in run["findings"]]
            points.append({"point": point, "verdict": run["verdict"], "seconds": run["seconds"]})
            if run["verdict"] != "passed":
                break  # one failing point fails the range; the rest would only cost time
        stage = _stage("dynamic", start, findings)
        return {**stage, "range": {"template_digest": template,
                                   "box": {n: [lo, hi] for n, (_f, lo, hi) in box.items()},
                                   "points": points}}

    async def _dynamic_run(self, subsystem: str, doc: dict[str, Any]) -> dict[str, Any]:
        """One dynamic test of ``doc`` (measured again while inconclusive, a bounded number)."""
        queued = time.monotonic()
        async with self._dynamic:
            start, started_at = time.monotonic(), time.time()
            attempts: list[dict[str, Any]] = []
            # An inconclusive run (the subsystem measured but could not
            # tell) is measured again, a bounded number of times; a pass
            # or a fail is final.  Every attempt stays in the report.
            for _ in range(DYNAMIC_ATTEMPTS):
                try:
                    findings = await asyncio.to_thread(
                        self._plugins.call_first, "schedcp_dynamic_check",
                        subsystem=subsystem, policy=doc, seconds=self.dynamic_seconds)
                except NotSupported as err:
                    findings = [_finding("unsupported", str(err))]
                if findings is None:
                    findings = [_finding("no-dynamic-check",
                                         f"subsystem {subsystem!r} offers no dynamic test")]
                attempts.append(_stage("dynamic", start, findings))
                if attempts[-1]["verdict"] != "inconclusive":
                    break
                _LOGGER.info("dynamic stage inconclusive: measuring again")
            ended_at = time.time()  # before the next test may start
        return {**_stage("dynamic", start, findings),
                "attempts": [{"verdict": a["verdict"], "seconds": a["seconds"]}
                             for a in attempts],
                "waited_seconds": round(start - queued, 4),
                "started_at": started_at, "ended_at": ended_at}
