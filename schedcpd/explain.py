"""Explain: why a task has the values it has, and what a deployment did to its targets.

Every kernel value schedcp writes is in the journal (:mod:`schedcpd.journal`)
with its owner — a deployment id — and its prior value.  An explanation
joins each journal row with the chain of evidence behind it:

- the deployment (state, reason, every transition);
- the policy version it deployed (name, id = the SHA-256 of its text);
- the token it redeemed (issuer key id, the token's SHA-256, nonce,
  expiry), recorded at ``Deploy`` (migration 9; older rows say unknown);
- the verification report the token's ``report_digest`` names, and
  whether it is kept here (``GetVerificationReport`` returns it);
- the circuit breaker's figures (baseline and probation medians recorded
  when the deployment went active, or the trip with its measured
  regression) and the deployment's history.

For a process, the owning subsystem says which journal keys concern it
(``schedcp_explain_keys``: its threads, this incarnation, and cgroups it was
moved into); for a deployment, every row it owns is grouped by target
(``schedcp_describe_key``).  A value that was put back says so, from what to
what.  The engine names no subsystem and imports no bus library.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from schedcpd.deployer import Deployer
from schedcpd.errors import InvalidArgument, NotFound
from schedcpd.journal import APPLIED, OVERRIDDEN, PENDING, RESTORED, SKIPPED, STATES, Journal
from schedcpd.plugins import PluginHost
from schedcpd.reports import ReportStore
from schedcpd.repository import Repository
from schedcpd.state import StateStore

DEPLOYMENT_ID = re.compile(r"dep-[0-9a-f]{12}")
PID_MAX = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
#: at most this many values in one explanation (a managed build tree has thousands)
MAX_VALUES = 1000
PROC = Path("/proc")


def _effect(state: str, prior: Any, new: Any) -> str:
    """One line for an operator: is the value ours now, or what became of it."""
    if state in (APPLIED, PENDING):
        return f"in effect: {prior!r} -> {new!r}"
    if state == RESTORED:
        return f"restored: {new!r} -> {prior!r}"
    if state == SKIPPED:
        return f"not restored ({prior!r} was the value before {new!r}): the target is gone"
    if state == OVERRIDDEN:
        return f"overridden by someone else after we set {new!r}: no longer managed"
    return state


class Explainer:
    """Builds explanations from the journal, deployments, repository and reports."""

    def __init__(self, journal: Journal, plugins: PluginHost, deployer: Deployer,
                 repository: Repository, store: StateStore,
                 reports: ReportStore | None = None) -> None:
        self._journal = journal
        self._plugins = plugins
        self._deployer = deployer
        self._repo = repository
        self._store = store
        self._reports = reports

    async def explain(self, subject: str) -> dict[str, Any]:
        """Explain a process (a decimal pid) or a deployment (``dep-`` + 12 hex digits)."""
        text = subject.strip()
        if text.isdigit() and text.isascii():
            return await self.explain_pid(int(text))
        if DEPLOYMENT_ID.fullmatch(text):
            return await self.explain_deployment(text)
        raise InvalidArgument(f"cannot explain {subject[:64]!r}: give a process id (decimal) "
                              "or a deployment id (dep-0123456789ab)")

    # -- a process ------------------------------------------------------

    async def explain_pid(self, pid: int) -> dict[str, Any]:
        """Every value schedcp changed on process ``pid`` (now running), with its evidence."""
        if not 0 < pid <= PID_MAX:
            raise InvalidArgument(f"a process id is 1..{PID_MAX}, got {pid}")
        if not (PROC / str(pid)).is_dir():
            raise NotFound(f"no process {pid} is running (a finished deployment can still be "
                           "explained by its id)")
        keys = await asyncio.to_thread(self._keys_of, pid)
        entries = await asyncio.to_thread(self._entries_for, keys)
        comm = _comm(pid)
        if comm is None:
            raise NotFound(f"process {pid} exited while it was being explained")
        values, deployments = await self._values(entries)
        return {"subject": {"pid": pid, "comm": comm}, "values": values,
                "deployments": deployments, "truncated": max(0, len(entries) - MAX_VALUES),
                "summary": _summary(values)}

    def _keys_of(self, pid: int) -> list[str]:
        keys: list[str] = []
        for subsystem in sorted(self._plugins.subsystems()):
            answer = self._plugins.call_first("schedcp_explain_keys", subsystem=subsystem,
                                              pid=pid)
            if answer:
                keys += [k for k in answer if isinstance(k, str) and k]
        return keys

    def _entries_for(self, keys: list[str]) -> list[Any]:
        seen: dict[int, Any] = {}
        for key in keys:
            found = (self._journal.for_key_prefix(key, states=STATES) if key.endswith(":")
                     else self._journal.for_key(key, states=STATES))
            for entry in found:
                seen[entry.id] = entry
        return [seen[i] for i in sorted(seen)]

    # -- a deployment ---------------------------------------------------

    async def explain_deployment(self, dep_id: str) -> dict[str, Any]:
        """What deployment ``dep_id`` changed, per target, with its evidence (also once ended)."""
        if not DEPLOYMENT_ID.fullmatch(dep_id):
            raise InvalidArgument("a deployment id looks like dep-0123456789ab")
        record = await self._deployment(dep_id)  # NotFound for no such deployment
        entries = await asyncio.to_thread(
            lambda: list(reversed(self._journal.entries(owner=dep_id, limit=MAX_VALUES + 1))))
        values, _ = await self._values(entries, {dep_id: record})
        targets: dict[str, list[dict[str, Any]]] = {}
        for value in values:
            targets.setdefault(value["target"], []).append(value)
        return {"subject": {"deployment": dep_id}, "deployment": record, "targets": targets,
                "truncated": max(0, len(entries) - MAX_VALUES), "summary": _summary(values)}

    # -- the evidence ---------------------------------------------------

    async def _values(self, entries: list[Any], known: dict[str, dict[str, Any]] | None = None
                      ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        deployments = dict(known or {})
        values = []
        for entry in entries[:MAX_VALUES]:
            if DEPLOYMENT_ID.fullmatch(entry.owner) and entry.owner not in deployments:
                try:
                    deployments[entry.owner] = await self._deployment(entry.owner)
                except NotFound:  # a journal older than the database (restored backup)
                    deployments[entry.owner] = {"id": entry.owner, "unknown": True}
            named = await asyncio.to_thread(self._plugins.call_first, "schedcp_describe_key",
                                            subsystem=entry.subsystem, key=entry.key) or {}
            values.append({
                "entry": entry.id, "time": entry.time, "subsystem": entry.subsystem,
                "owner": entry.owner, "kind": entry.kind, "key": entry.key,
                "target": str(named.get("target", entry.key)),
                "knob": str(named.get("knob", entry.kind)),
                "before": entry.prior, "value": entry.new, "state": entry.state,
                "restored": entry.state == RESTORED, "note": entry.note,
                "effect": _effect(entry.state, entry.prior, entry.new),
            })
        return values, deployments

    async def _deployment(self, dep_id: str) -> dict[str, Any]:
        dep = await self._deployer.get(dep_id)
        token = dep.get("token") or None
        policy: dict[str, Any] = {"id": dep["policy_id"], "name": dep["name"],
                                  "digest": dep["policy_digest"]}
        try:
            stored = await self._repo.get(dep["policy_id"])
            policy.update(state=stored["state"], track=stored["track"],
                          provenance=stored["provenance"], description=stored["description"])
        except NotFound:
            policy["gone"] = True
        outcomes = await self._store.run(lambda db: _outcomes(db, dep_id))
        return {
            "id": dep_id, "state": dep["state"], "reason": dep["reason"],
            "subsystem": dep["subsystem"], "uid": dep["uid"], "created": dep["created"],
            "updated": dep["updated"], "held_by": dep.get("held_by", []),
            "policy": policy,
            "token": token,
            "report": await self._report(token["report_digest"] if token else None),
            "breaker": {"trip": dep["trip"], "figures": outcomes,
                        "history": dep["events"]},
        }

    async def _report(self, digest: str | None) -> dict[str, Any] | None:
        """The verification report a token names: whether it is kept, and its verdict."""
        if digest is None:
            return None
        out: dict[str, Any] = {"digest": digest, "kept": False}
        if self._reports is None:
            return out
        try:
            report = json.loads(await self._reports.get(digest))
        except (NotFound, InvalidArgument):  # e.g. a token from another verifier host
            return out
        out.update(kept=True, passed=report.get("passed"),
                   stages=[{"stage": s.get("stage"), "passed": s.get("passed"),
                            "skipped": s.get("skipped")} for s in report.get("stages", [])])
        return out


def _outcomes(db: Database, dep_id: str) -> list[dict[str, Any]]:
    """The breaker's recorded figures for one deployment (active, reverted, rolled back)."""
    rows = list(db.table("policy_outcomes").rows_where(
        "deployment_id = ?", [dep_id], order_by="id", select="time, outcome, metrics, note"))
    for row in rows:
        row["metrics"] = json.loads(row["metrics"] or "null")
    return rows


def _comm(pid: int) -> str | None:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def _summary(values: list[dict[str, Any]]) -> dict[str, int]:
    """How many values are in each journal state."""
    counts = dict.fromkeys(STATES, 0)
    for value in values:
        counts[value["state"]] = counts.get(value["state"], 0) + 1
    return {state: n for state, n in counts.items() if n}
