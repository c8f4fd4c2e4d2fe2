"""schedcpctl's deployment commands: list, show, plan, deploy, rollback, hold, watch.

Each takes the :class:`~schedcpd.dbus.client.Client` and the parsed
arguments and returns an :class:`~schedcpd.cli_output.Outcome`.  ``deploy
--wait`` and ``hold`` follow the ``DeploymentChanged`` signal (subscribed
before the call that starts what they follow, so no transition is missed)
and report each transition on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from schedcpd.cli_output import (
    EXIT_INTERRUPTED,
    EXIT_NOT_ACTIVE,
    EXIT_OK,
    EXIT_TIMEOUT,
    FINAL_STATES,
    Outcome,
    Progress,
    StopSignals,
    next_or_stop,
    read_arg,
    short,
    table,
    when,
)
from schedcpd.dbus.client import Client

SIGNAL = "DeploymentChanged"
SETTLED = ("active", *FINAL_STATES)


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


async def deployments(client: Client, args: argparse.Namespace) -> Outcome:
    """``deployments [--live]``: the newest deployments, newest first."""
    rows = await client.call_json("ListDeployments")
    if args.live:
        rows = [d for d in rows if d["state"] not in FINAL_STATES]
    if not rows:
        return Outcome(rows, "no deployments" + (" are live" if args.live else ""))
    return Outcome(rows, table(
        ["id", "policy", "state", "uid", "created", "reason"],
        [(d["id"], d["name"], d["state"], d["uid"], when(d["created"]), short(d["reason"], 60))
         for d in rows]))


def show_deployment(dep: dict[str, Any]) -> str:
    """A deployment for humans: state, policy, token, targets, trip, history."""
    token = dep.get("token") or {}
    lines = [
        f"deployment {dep['id']}: {dep['state']} ({dep['reason']})",
        f"policy:     {dep['name']} ({dep['policy_id'][:12]}), subsystem {dep['subsystem']}, "
        f"deployed by uid {dep['uid']}",
        "token:      " + (f"key {token['kid']}, sha256 {token['digest'][:16]}, report "
                          f"{token['report_digest'][:16]}" if token else "not recorded"),
        f"held by:    {', '.join(dep.get('held_by') or []) or 'nobody'}",
    ]
    for group, pids in sorted((dep.get("targets") or {}).items()):
        lines.append(f"targets:    {group}: {' '.join(map(str, pids)) or 'none'}")
    trip = dep.get("trip")
    if trip:
        lines.append(f"breaker:    tripped on {trip.get('guard')} of {trip.get('group')}: "
                     f"{trip.get('detail')}")
    for o in dep.get("overridden") or []:
        lines.append(f"overridden: {o.get('key')}: {o.get('note')}")
    lines += ["", table(["time", "state", "reason"],
                        [(when(e["time"]), e["state"], e["reason"]) for e in dep["events"]])]
    return "\n".join(lines)


async def show(client: Client, args: argparse.Namespace) -> Outcome:
    """``deployment show ID``."""
    dep = await client.call_json("GetDeployment", "s", args.id)
    return Outcome(dep, show_deployment(dep))


def _show_plan(plan: dict[str, Any]) -> str:
    body = plan["plan"] or {}
    changes = body.get("changes", [])
    lines = [f"plan for {plan['name']} ({plan['policy_id'][:12]}): {len(changes)} value(s); "
             "nothing was written"]
    for group, pids in sorted((body.get("targets") or {}).items()):
        lines.append(f"  {group}: {' '.join(map(str, pids)) or 'no process matches'}")
    lines.append(table(["target", "knob", "before", "after", "status", "note"],
                       [(c["target"], c["knob"], short(c["before"], 24), short(c["after"], 24),
                         c["status"], c.get("note", "")) for c in changes]))
    for problem in body.get("problems") or []:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


async def plan(client: Client, args: argparse.Namespace) -> Outcome:
    """``plan TOKEN`` (and ``deploy --plan``): advice mode, every value it would write."""
    result = await client.call_json("PlanDeployment", "s", read_arg(args.token).strip())
    return Outcome(result, _show_plan(result))


async def _follow(client: Client, queue: asyncio.Queue[list[Any]], dep_id: str,
                  progress: Progress, deadline: float | None,
                  stop: asyncio.Event) -> dict[str, Any] | None:
    """Report ``dep_id``'s transitions until it settles; its record, or None on timeout/stop."""
    said: set[tuple[str, str]] = set()
    dep = await client.call_json("GetDeployment", "s", dep_id)
    for event in dep["events"]:
        said.add((event["state"], event["reason"]))
        progress.say(f"{dep_id}: {event['state']}: {event['reason']}")
    state = dep["state"]
    while state not in SETTLED:
        body = await next_or_stop(queue, stop, deadline)
        if body is None:
            return None
        if body[0] != dep_id or (body[1], body[2]) in said:
            continue
        said.add((body[1], body[2]))
        state = body[1]
        progress.say(f"{dep_id}: {body[1]}: {body[2]}")
    return dict(await client.call_json("GetDeployment", "s", dep_id))


async def deploy(client: Client, args: argparse.Namespace, progress: Progress) -> Outcome:
    """``deploy TOKEN [--plan] [--wait [--timeout S]]``."""
    if args.plan:
        return await plan(client, args)
    token = read_arg(args.token).strip()
    queue = await client.subscribe(SIGNAL) if args.wait else None
    dep_id = await client.call("Deploy", "s", token)
    if queue is None:
        return Outcome({"id": dep_id}, dep_id)
    progress.say(f"{dep_id}: deployed; following its canary and probation")
    with StopSignals() as stop:
        dep = await _follow(client, queue, dep_id, progress, _deadline(args.timeout),
                            stop.event)
    if dep is None:
        now = await client.call_json("GetDeployment", "s", dep_id)
        why = "interrupted" if stop.received else f"timed out after {args.timeout:g} s"
        progress.say(f"{dep_id}: {why} while {now['state']}; the deployment goes on")
        code = EXIT_INTERRUPTED if stop.received else EXIT_TIMEOUT
        return Outcome(now, show_deployment(now), code)
    code = EXIT_OK if dep["state"] == "active" else EXIT_NOT_ACTIVE
    return Outcome(dep, show_deployment(dep), code)


async def rollback(client: Client, args: argparse.Namespace) -> Outcome:
    """``rollback ID``: restore what the deployment changed."""
    result = await client.call_json("Rollback", "s", args.id)
    restore = result.get("restore") or {}
    counts = ", ".join(f"{n} {k}" for k, n in sorted((restore.get("summary") or {}).items()))
    lines = [f"{result['id']} {result['state']}; values: {counts or 'none to restore'}"]
    entries = restore.get("entries") or []
    if entries:
        lines.append(table(["key", "from", "to", "outcome", "note"],
                           [(e["key"], short(e.get("new"), 24), short(e.get("prior"), 24),
                             e.get("outcome", ""), e.get("note", "")) for e in entries]))
    return Outcome(result, "\n".join(lines))


async def hold(client: Client, args: argparse.Namespace, progress: Progress) -> Outcome:
    """``hold ID [--release-on-exit] [--timeout S]``: keep it only while this command runs.

    A hold belongs to the bus connection that made it: when this command
    ends (Ctrl-C, SIGTERM, ``--timeout``), the daemon rolls the deployment
    back — unless ``--release-on-exit`` releases the hold first, which
    leaves the deployment running.
    """
    ended: str | None = None
    with StopSignals() as stop:
        queue = await client.subscribe(SIGNAL)
        await client.call("HoldDeployment", "s", args.id)
        start = time.monotonic()
        progress.say(f"holding {args.id}: " + (
            "the hold is released when this command ends" if args.release_on_exit
            else "it is rolled back when this command ends") + " (Ctrl-C)")
        deadline = _deadline(args.timeout)
        while True:
            body = await next_or_stop(queue, stop.event, deadline)
            if body is None:
                break
            if body[0] == args.id:
                progress.say(f"{args.id}: {body[1]}: {body[2]}")
                if body[1] in FINAL_STATES:
                    ended = body[1]
                    break
    why = (ended and f"the deployment ended {ended}") or (
        f"{stop.received} received" if stop.received else "timeout")
    released = False
    if ended is None and args.release_on_exit:
        await client.call("ReleaseHold", "s", args.id)
        released = True
    result = {"id": args.id, "held_seconds": round(time.monotonic() - start, 1),
              "ended_by": why, "released": released,
              "rolled_back_by_leaving": ended is None and not released}
    text = (f"{args.id}: hold ended ({why}); " + (
        "released: the deployment stays" if released else
        "the daemon rolls it back as this client leaves" if ended is None else
        "nothing left to hold"))
    return Outcome(result, text, EXIT_NOT_ACTIVE if ended else EXIT_OK)


def _watch_line(body: list[Any]) -> str:
    return f"{when(time.time())}  {body[0]}  {body[1]:<8}  {body[2]}"


async def watch(client: Client, args: argparse.Namespace, progress: Progress) -> Outcome:
    """``watch [ID ...] [--count N] [--timeout S]``: print DeploymentChanged as it comes."""
    wanted = set(args.ids)
    seen = 0
    with StopSignals() as stop:  # before saying it watches: a stop then is handled
        queue = await client.subscribe(SIGNAL)
        progress.say("watching DeploymentChanged" + (f" of {', '.join(sorted(wanted))}"
                                                     if wanted else "") + " (Ctrl-C to stop)")
        deadline = _deadline(args.timeout)
        while args.count is None or seen < args.count:
            body = await next_or_stop(queue, stop.event, deadline)
            if body is None:
                break
            if wanted and body[0] not in wanted:
                continue
            seen += 1
            record = {"time": time.time(), "id": body[0], "state": body[1], "reason": body[2]}
            print(json.dumps(record, sort_keys=True) if args.json else _watch_line(body),
                  flush=True)
    short_of = args.count is not None and seen < args.count and not stop.received
    if short_of:
        progress.say(f"timed out after {args.timeout:g} s with {seen} of {args.count} changes")
    return Outcome(printed=True, code=EXIT_TIMEOUT if short_of else EXIT_OK)
