"""Deployment: canary rollout watched by the circuit breaker, holds, crash recovery.

``Deploy(token)`` redeems a verifier token and starts a deployment:

    pending ──▶ canary (a subset of each group's targets) ──▶ canary (widened
    to the full scope) ──▶ active          … or reverted / failed

A policy of several subsystems is deployed as one: its parts are applied
in order, a part that fails restores the parts applied before it, and
its guards, health and restores are every part's (:mod:`schedcpd.deploy_parts`).

Before anything is written, a baseline of the targets' guard metrics is
sampled with the guards the owning plugin provides (hook ``schedcp_guards``;
the verdicts are :mod:`schedcpd.breaker`'s).  Each probation window compares samples
with that baseline; a trip restores the deployment's values through the
owning plugin (which journaled every prior value) at once, records the
antipattern on the policy, and backs the policy's digest off exponentially.
Every state change is stored with its reason (``deployment_events``) and
announced with the ``DeploymentChanged`` signal.

A deployment can be *held* by a client for the life of its bus connection;
when the client disappears the deployment is rolled back.  After a crash,
the plugins restore every journaled value at start-up and
:meth:`Deployer.recover` marks deployments that were in flight as reverted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from schedcpd import verdicts
from schedcpd.breaker import Breaker, BreakerSettings, Guards, Samples, Trip, guard_figures
from schedcpd.deploy_parts import DeployParts, group_metrics
from schedcpd.errors import Conflict, InvalidArgument, NotFound, SchedcpError
from schedcpd.payloads import Scope
from schedcpd.plugins import PluginHost
from schedcpd.repository import Repository, parse_document, policy_scope
from schedcpd.safety_events import NO_EVENTS, SafetyEvents
from schedcpd.state import StateStore
from schedcpd.tokens import TokenAuthority, digest_of

_LOGGER = logging.getLogger(__name__)

FINAL = ("reverted", "failed")
FAULT_STEPS = ("after_record", "after_baseline", "after_canary_apply", "after_widen_apply",
               "after_active", "after_trip_decision")
PART_FAULT_STEP = "after_part_apply"
"""After each part of a multi-subsystem policy applied (only such a policy reaches it)."""


def migrate_deployments(db: Database) -> None:
    """Schema: deployments and their state transitions."""
    db.table("deployments").create(
        {"id": str, "policy_id": str, "policy_digest": str, "name": str, "subsystem": str,
         "uid": int, "state": str, "reason": str, "created": float, "updated": float,
         "targets": str, "trip": str},
        pk="id",
    )
    db.table("deployment_events").create(
        {"id": int, "deployment_id": str, "time": float, "state": str, "reason": str},
        pk="id", foreign_keys=[("deployment_id", "deployments", "id")],
    )
    db.table("deployment_events").create_index(["deployment_id"])


def migrate_deployment_token(db: Database) -> None:
    """Schema: the token each deployment redeemed (key id, digest, report digest).

    What ``Explain`` names for every value a deployment changed; rows from
    before this migration have ``""`` (unknown).
    """
    db.table("deployments").add_column("token", str, not_null_default="")


def token_record(token: str, claims: dict[str, Any]) -> dict[str, Any]:
    """What a deployment keeps of the token it redeemed (not the token itself).

    The SHA-256 of the token text names it without making it reusable text
    in the database (a used token is refused anyway: its nonce is spent).
    """
    return {"digest": digest_of(token), "kid": claims["kid"], "nonce": claims["nonce"],
            "uid": claims["uid"], "iat": claims["iat"], "exp": claims["exp"],
            "report_digest": claims["report_digest"], "policy_digest": claims["policy_digest"]}


@dataclass
class DeployerSettings:
    """``[deployer]`` in schedcpd.toml."""

    baseline_seconds: float = 2.0
    canary_seconds: float = 3.0
    full_seconds: float = 3.0
    backoff_seconds: float = 60.0
    health_seconds: float = 0.2
    fault_injection: bool = False


class Deployer:
    """Runs deployments; one asyncio task each, watched until it ends."""

    def __init__(self, store: StateStore, plugins: PluginHost, repository: Repository,
                 tokens: TokenAuthority, settings: DeployerSettings | None = None,
                 breaker: BreakerSettings | None = None,
                 emit: Callable[[str, str, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: wall-clock seconds for the records and the back-off (tests pass theirs)."""
        self._store = store
        self._clock = clock
        self._plugins = plugins
        self._repo = repository
        self._tokens = tokens
        self.settings = settings or DeployerSettings()
        self.breaker_settings = breaker or BreakerSettings()
        self._emit = emit or (lambda *_: None)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._holds: dict[str, set[str]] = {}
        self.trips: list[dict[str, Any]] = []
        self.live: dict[str, str] = {}
        """Deployment id -> policy name, for deployments in canary or active."""
        self.on_live_change: Callable[[], None] = lambda: None
        self.on_targets: Callable[[list[int]], None] = lambda pids: None
        """Told the target pids before the baseline (the analyzer watches them)."""
        self.events: SafetyEvents = NO_EVENTS
        """Told of refused tokens, trips and restores (the daemon's metrics)."""

    # -- persistence ----------------------------------------------------

    async def _set_state(self, dep_id: str, state: str, reason: str,
                         **fields: Any) -> None:
        now = self._clock()

        def write(db: Database) -> None:
            with db.conn:
                db.table("deployments").update(
                    dep_id, {"state": state, "reason": reason, "updated": now, **fields})
                db.table("deployment_events").insert(
                    {"deployment_id": dep_id, "time": now, "state": state, "reason": reason})

        await self._store.run(write)
        _LOGGER.info("deployment %s: %s (%s)", dep_id, state, reason)
        self._emit(dep_id, state, reason)
        if state in FINAL and self.live.pop(dep_id, None) is not None:
            self.on_live_change()

    async def record_verdict(self, dep_id: str, verdict: dict[str, Any],
                             uid: int) -> dict[str, Any]:
        """The owner's parsed verdict on ``dep_id`` into its policy's history (:mod:`verdicts`)."""
        return await verdicts.record(self._repo, await self.get(dep_id), verdict, uid)

    async def get(self, dep_id: str) -> dict[str, Any]:
        """A deployment with its transitions."""
        def query(db: Database) -> dict[str, Any] | None:
            rows = list(db.table("deployments").rows_where("id = ?", [dep_id]))
            if not rows:
                return None
            dep = rows[0]
            dep["targets"] = json.loads(dep["targets"] or "{}")
            dep["trip"] = json.loads(dep["trip"] or "null")
            dep["token"] = json.loads(dep.get("token") or "null")
            dep["events"] = list(db.table("deployment_events").rows_where(
                "deployment_id = ?", [dep_id], order_by="id",
                select="time, state, reason"))
            return dep

        dep = await self._store.run(query)
        if dep is None:
            raise NotFound(f"no deployment {dep_id}")
        dep["held_by"] = sorted(self._holds.get(dep_id, ()))
        # Values an administrator changed by hand are no longer managed: say so.
        states = await asyncio.to_thread(self._parts(dep["subsystem"], None).state)
        dep["overridden"] = [o for state in states for o in state.get("overrides", [])
                             if o.get("owner") == dep_id]
        return dep

    async def owner(self, dep_id: str) -> int:
        """The uid that deployed ``dep_id``; :class:`NotFound` for no such deployment."""
        def query(db: Database) -> int | None:
            row = db.execute("SELECT uid FROM deployments WHERE id = ?", [dep_id]).fetchone()
            return None if row is None else int(row[0])

        uid = await self._store.run(query)
        if uid is None:
            raise NotFound(f"no deployment {dep_id}")
        return uid

    async def deployments(self, live_only: bool = False) -> list[dict[str, Any]]:
        """Deployments, newest first (only those not reverted/failed with ``live_only``)."""
        def query(db: Database) -> list[dict[str, Any]]:
            where = "state NOT IN ('reverted', 'failed')" if live_only else None
            return list(db.table("deployments").rows_where(
                where, order_by="created desc", limit=100,
                select="id, policy_id, name, subsystem, uid, state, reason, created, updated"))
        return await self._store.run(query)

    # -- deploy ---------------------------------------------------------

    async def _redeem(self, token: str, uid: int, consume: bool) -> tuple[dict[str, Any],
                                                                        dict[str, Any]]:
        """Check ``token`` against the policy as stored now; consume it when deploying."""
        claims = self._tokens.check(token)
        subsystem, scope = "", None
        try:
            policy = await self._repo.get(claims["policy_id"])
            stored = digest_of(policy["document"])
            subsystem = policy["subsystem"]
            scope = policy_scope(parse_document(policy["document"], policy["id"][:12]))
        except NotFound:
            policy, stored = {}, None
        if consume:
            claims = await self._tokens.redeem(token, uid=uid, stored_digest=stored,
                                               subsystem=subsystem, scope=scope)
        else:
            claims = self._tokens.validate(token, uid=uid, stored_digest=stored,
                                           subsystem=subsystem, scope=scope)
        return claims, policy

    async def plan(self, token: str, uid: int) -> dict[str, Any]:
        """Advice mode: exactly what a deployment would write; changes nothing."""
        claims, policy = await self._redeem(token, uid, consume=False)
        doc = parse_document(policy["document"], policy["id"][:12])
        report = await asyncio.to_thread(self._parts(claims["subsystem"], doc).apply,
                                         {"owner": "plan"}, True)
        return {"policy_id": policy["id"], "name": policy["name"], "plan": report}

    async def backoff_left(self, digest: str) -> float:
        """Seconds until a policy version (by digest) may deploy again after trips.

        ``backoff_seconds`` after its latest trip, doubled for each earlier
        one (up to 8 counted): 0 when it never tripped or the time is up.
        """
        def query(db: Database) -> list[float]:
            return [r[0] for r in db.execute(
                "SELECT updated FROM deployments WHERE policy_digest = ? AND trip != '' "
                "AND trip IS NOT NULL AND trip != 'null' ORDER BY updated DESC LIMIT 8",
                [digest])]

        trips = await self._store.run(query)
        if not trips:
            return 0.0
        wait = self.settings.backoff_seconds * 2 ** (len(trips) - 1)
        return max(0.0, trips[0] + wait - self._clock())

    async def deploy(self, token: str, uid: int) -> str:
        """Redeem ``token`` and start the deployment; return its id at once."""
        with self._refusal():
            claims = self._tokens.check(token)
        left = await self.backoff_left(claims["policy_digest"])
        if left > 0:
            self.events.token_refused("BackingOff")
            raise Conflict(f"policy {claims['policy_id'][:12]} tripped the breaker recently; "
                           f"backing off for {left:.0f} more seconds")
        with self._refusal():
            claims, policy = await self._redeem(token, uid, consume=False)
            if policy.get("track", "T1") != "T1":
                # A policy that runs an artifact (T2: a BPF object): the subsystem
                # checks the token's binding before the token is consumed, so an
                # object it does not bind (ObjectMismatch) leaves it usable.
                doc = parse_document(policy["document"], policy["id"][:12])
                await asyncio.to_thread(self._parts(claims["subsystem"], doc).apply,
                                        {"owner": "plan", "artifact": claims.get("artifact")},
                                        True)
            claims, policy = await self._redeem(token, uid, consume=True)
        dep_id = f"dep-{uuid.uuid4().hex[:12]}"
        now = self._clock()
        row = {"id": dep_id, "policy_id": policy["id"], "policy_digest": claims["policy_digest"],
               "name": policy["name"], "subsystem": claims["subsystem"], "uid": uid,
               "state": "pending", "reason": "token accepted", "created": now, "updated": now,
               "targets": "{}", "trip": "",
               "token": json.dumps(token_record(token, claims), sort_keys=True)}

        def insert(db: Database) -> None:
            with db.conn:
                db.table("deployments").insert(row)
                db.table("deployment_events").insert(
                    {"deployment_id": dep_id, "time": now, "state": "pending",
                     "reason": "token accepted"})

        await self._store.run(insert)
        self._emit(dep_id, "pending", "token accepted")
        self.live[dep_id] = policy["name"]
        self.on_live_change()
        self._fault("after_record")
        doc = parse_document(policy["document"], policy["id"][:12])
        self._tasks[dep_id] = asyncio.get_running_loop().create_task(
            self._run(dep_id, policy, doc, claims["subsystem"], claims.get("artifact")))
        return dep_id

    @contextmanager
    def _refusal(self) -> Iterator[None]:
        """Count a named error raised inside as a refused token (by its name)."""
        try:
            yield
        except SchedcpError as err:
            self.events.token_refused(err.name)
            raise

    def _parts(self, subsystem: str, doc: dict[str, Any] | None) -> DeployParts:
        """The policy's parts (one, or one per subsystem) as this deployer drives them."""
        parts = DeployParts(self._plugins, subsystem, doc, self.events)
        parts.on_applied = lambda _subsystem: self._fault(PART_FAULT_STEP)
        return parts

    async def _run(self, dep_id: str, policy: dict[str, Any], doc: dict[str, Any],
                   subsystem: str, artifact: dict[str, str] | None = None) -> None:
        # The token's artifact binding goes with every write of a T2 policy.
        bound: Scope = {"artifact": artifact} if artifact is not None else {}
        parts = self._parts(subsystem, doc)
        try:
            planned = await asyncio.to_thread(parts.apply, {"owner": dep_id}, True)
            targets: dict[str, list[int]] = planned.get("targets", {})
            # A change whose narrowest scope is the whole machine (the plugin
            # says so); its canary may run all the targets in a restricted
            # mode (``canary = "partial"``), judged on progress alone.
            machine = planned.get("scope") == "machine"
            partial = machine and planned.get("canary") == "partial"
            self.on_targets(sorted({p for pids in targets.values() for p in pids})[:64])
            sampler = await asyncio.to_thread(parts.guards, targets)
            baseline = await self._watch(sampler, self.settings.baseline_seconds
                                         if targets else 0.0)
            guard_roles = sampler.roles(baseline, self.breaker_settings)
            roles, limits = guard_roles.roles, guard_roles.limits
            _LOGGER.info("deployment %s guards: %s", dep_id, roles)
            self._fault("after_baseline")
            canary = {g: pids if partial else pids[: max(1, len(pids) // 2)]
                      for g, pids in targets.items() if pids}
            applied = await asyncio.to_thread(parts.apply,
                                              {"owner": dep_id, **bound, "pids": sorted(
                                                  p for pids in canary.values() for p in pids)})
            if applied.get("reason"):  # the plugin's own words for what it did
                reason = str(applied["reason"])
            elif machine:
                reason = f"applied machine-wide ({applied.get('note')})"
            else:
                reason = (f"applied to {sum(map(len, canary.values()))} of "
                          f"{sum(map(len, targets.values()))} target processes")
            await self._set_state(dep_id, "canary", reason, targets=json.dumps(targets))
            self._fault("after_canary_apply")
            # A partial canary is judged on progress (stalls) and the plugin's
            # health; performance from the full scope on.
            # A group the plugin gives no role is not guarded (only its health can trip).
            canary_roles = {g: "progress" if partial else roles[g] for g in canary
                            if partial or g in roles}
            breaker = Breaker(canary_roles, sampler.metrics, self.breaker_settings, limits,
                              group_metrics(sampler))
            if await self._probation(dep_id, parts, policy, sampler.subset(canary),
                                     baseline, breaker, self.settings.canary_seconds):
                return
            if partial:
                widened = await asyncio.to_thread(parts.apply, {"owner": dep_id, **bound})
                await self._set_state(dep_id, "canary", str(widened.get("reason")
                                                             or widened.get("note")))
            elif machine:
                await self._set_state(dep_id, "canary", str(
                    applied.get("full_scope_reason") or "full-scope probation (the change "
                    "has applied machine-wide since the canary)"))
            else:
                await asyncio.to_thread(parts.apply, {"owner": dep_id})
                await self._set_state(dep_id, "canary", "widened to the full scope")
            self._fault("after_widen_apply")
            breaker = Breaker({g: roles[g] for g in targets if targets[g] and g in roles},
                              sampler.metrics, self.breaker_settings, limits,
                              group_metrics(sampler))
            seen: Samples = []
            if await self._probation(dep_id, parts, policy, sampler, baseline, breaker,
                                     self.settings.full_seconds, seen=seen):
                return
            await self._set_state(dep_id, "active", "probation passed on the full scope")
            await self._repo.record_outcome(policy["id"], dep_id, "active",
                                            guard_figures(breaker.roles, sampler.metrics,
                                                          baseline, seen,
                                                          group_metrics(sampler)),
                                            "probation passed on the full scope")
            if policy["state"] in ("candidate", "verified"):
                await self._repo.set_state(policy["id"], "proven")
            self._fault("after_active")
            # Keep watching while active: a regression later still trips.
            await self._probation(dep_id, parts, policy, sampler, baseline, breaker, None,
                                  fixed=_pid_only(parts.groups()))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            _LOGGER.exception("deployment %s failed", dep_id)
            await asyncio.to_thread(parts.restore, dep_id, "error")
            await self._set_state(dep_id, "failed", f"{type(err).__name__}: {err}; restored")
        finally:
            self._tasks.pop(dep_id, None)

    async def _watch(self, sampler: Guards, seconds: float) -> Samples:
        period = 1.0 / self.breaker_settings.rate_hz
        sampler.sample()
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(period)
            samples.append(sampler.sample())
        return samples

    async def _probation(self, dep_id: str, parts: DeployParts, policy: dict[str, Any],
                         sampler: Guards, baseline: Samples,
                         breaker: Breaker, seconds: float | None, fixed: bool = True,
                         seen: Samples | None = None) -> bool:
        """Watch for ``seconds`` (forever for None); True if the breaker tripped.

        ``seen``, when given, receives every sample taken (a bounded probation).

        The watched processes follow the subsystem's answer (``targets`` of
        ``schedcp_health``).  ``fixed``: the policy selects processes by pid
        only, so once they have all exited an active deployment ends.

        Guard metrics are sampled at ``rate_hz``; the subsystem's own health
        (``schedcp_health``: e.g. a scheduler loader that died) is asked every ``health_seconds``.
        """
        b = self.breaker_settings
        period = 1.0 / b.rate_hz
        # Enough samples for the judged window and for a stall over stall_seconds.
        keep = max(4 * b.window, int((b.stall_seconds + 1) * b.rate_hz))
        window: Samples = []
        sampler.sample()
        end = None if seconds is None else time.monotonic() + seconds
        next_health = 0.0
        while end is None or time.monotonic() < end:
            await asyncio.sleep(period)
            window.append(sampler.sample())
            window = window[-keep:]
            if seen is not None:
                seen.append(window[-1])
            trip = breaker.evaluate(baseline, window)
            if trip is None and time.monotonic() >= next_health:
                next_health = time.monotonic() + self.settings.health_seconds
                trip, current = await asyncio.to_thread(parts.health, dep_id)
                if current is not None:  # processes that matched later, not the exited
                    sampler.groups = {g: list(current.get(g, [])) for g in breaker.roles}
            if trip is None and sampler.groups and not sampler.alive():
                if seconds is None and fixed:
                    await self._set_state(dep_id, "reverted", "every target process exited")
                    await asyncio.to_thread(parts.restore, dep_id, "targets_exited")
                    return True
                continue  # a selector may match processes that start later
            if trip is not None:
                await self._trip(dep_id, parts, policy, trip)
                return True
        return False

    async def _trip(self, dep_id: str, parts: DeployParts, policy: dict[str, Any],
                    trip: Trip) -> None:
        decided = time.monotonic()
        self.events.breaker_trip(parts.subsystem, trip.guard)
        self._fault("after_trip_decision")
        await asyncio.to_thread(parts.restore, dep_id, "breaker")
        restored = time.monotonic()
        record = {**trip.as_dict(), "decision_to_restore_s": round(restored - decided, 4),
                  "decided_at": self._clock() - (restored - decided)}
        self.trips.append({"deployment": dep_id, **record})
        await self._set_state(dep_id, "reverted", f"circuit breaker: {trip.detail}",
                              trip=json.dumps(record))
        await self._repo.record_antipattern(policy["id"], f"deployment {dep_id}", trip.guard,
                                            trip.ratio, trip.detail)
        await self._repo.record_outcome(policy["id"], dep_id, "reverted", record, trip.detail)

    # -- rollback, holds, lifecycle -------------------------------------

    async def rollback(self, dep_id: str, reason: str = "rollback requested",
                       cause: str = "requested") -> dict[str, Any]:
        """Stop watching ``dep_id`` and restore what it changed (``cause``: for the metrics)."""
        dep = await self.get(dep_id)
        if dep["state"] in FINAL:
            raise Conflict(f"deployment {dep_id} is already {dep['state']}")
        task = self._tasks.pop(dep_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        report = await asyncio.to_thread(self._parts(dep["subsystem"], None).restore, dep_id,
                                         cause)
        self._holds.pop(dep_id, None)
        await self._set_state(dep_id, "reverted", reason)
        # Not the policy's fault: history shows it, the reuse rules skip it.
        await self._repo.record_outcome(dep["policy_id"], dep_id, "rolled-back",
                                        {"from_state": dep["state"]}, reason)
        return {"id": dep_id, "state": "reverted", "restore": report}

    def hold(self, dep_id: str, sender: str) -> None:
        """Tie ``dep_id`` to ``sender``'s connection: it is rolled back when that goes."""
        if dep_id not in self._tasks:
            raise InvalidArgument(f"deployment {dep_id} is not running")
        self._holds.setdefault(dep_id, set()).add(sender)

    def release(self, dep_id: str, sender: str) -> None:
        """Drop ``sender``'s hold on ``dep_id`` (it no longer reverts when they leave)."""
        holders = self._holds.get(dep_id, set())
        if sender not in holders:
            raise InvalidArgument(f"this connection holds no deployment {dep_id}")
        holders.discard(sender)
        if not holders:
            del self._holds[dep_id]

    def client_gone(self, sender: str) -> None:
        """A bus client disconnected: roll back what it held."""
        for dep_id, holders in list(self._holds.items()):
            if sender in holders:
                holders.discard(sender)
                if not holders:
                    asyncio.get_running_loop().create_task(
                        self.rollback(dep_id, f"the holder {sender} disconnected",
                                      "holder_gone"))

    async def recover(self) -> int:
        """At start: deployments live when the daemon died were restored by the journal.

        A restart mid-deployment is a breaker trip (guard ``daemon_restart``):
        the policy may be what brought the daemon down, so it gets the
        antipattern and the back-off of any other trip.  Nothing was
        measured, so the recorded regression is empty (NULL).
        """
        live = await self.deployments(live_only=True)
        for dep in live:
            detail = (f"the daemon restarted while deployment {dep['id']} was {dep['state']}; "
                      "every journaled value was restored at start-up")
            record = {"guard": "daemon_restart", "group": dep["subsystem"], "baseline": None,
                      "observed": None, "ratio": None, "detail": detail,
                      "decision_to_restore_s": None, "decided_at": self._clock()}
            self.trips.append({"deployment": dep["id"], **record})
            self.events.breaker_trip(dep["subsystem"], "daemon_restart")
            self.events.rolled_back(dep["subsystem"], "restart", None)
            await self._set_state(dep["id"], "reverted",
                                  "the daemon restarted mid-deployment; every journaled "
                                  "value was restored at start-up", trip=json.dumps(record))
            try:
                await self._repo.record_antipattern(dep["policy_id"], f"deployment {dep['id']}",
                                                    "daemon_restart", math.nan, detail)
                await self._repo.record_outcome(dep["policy_id"], dep["id"], "reverted",
                                                record, detail)
            except Exception:  # a policy row that is gone must not stop the start-up
                _LOGGER.exception("could not record the restart on policy %s",
                                  dep["policy_id"])
        return len(live)

    async def close(self) -> None:
        """At stop: cancel watchers; the daemon then restores every plugin's values."""
        tasks = list(self._tasks.items())
        for _dep_id, task in tasks:
            task.cancel()
        await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
        for dep_id, _task in tasks:
            await self._set_state(dep_id, "reverted", "the daemon stopped; values restored")

    def _fault(self, step: str) -> None:
        """Test-only fault injection: die at ``step`` when enabled and asked to."""
        if self.settings.fault_injection and os.environ.get("SCHEDCP_FAULT_AT") == step:
            _LOGGER.warning("fault injection: SIGKILL at %s", step)
            os.kill(os.getpid(), signal.SIGKILL)


def _pid_only(groups: list[dict[str, Any]]) -> bool:
    """Whether every group (of every part) selects its processes by pid alone."""
    return bool(groups) and all(
        isinstance(g.get("match"), dict) and set(g["match"]) == {"pid"} for g in groups)
