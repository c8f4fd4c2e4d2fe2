"""schedcpctl: talk to schedcpd over D-Bus.

    schedcpctl [--bus system|session|ADDRESS] [--json] [--quiet] COMMAND
    schedcpctl status | subsystems | reload | audit [--limit N] [--method NAME]
    schedcpctl summary [--detail brief|normal|full]
    schedcpctl probe list | run NAME [--seconds S] [--pid PID]
    schedcpctl perf [--pid PID | --cgroup PATH] [--seconds S]
    schedcpctl policy list [QUERY] | show ID | history ID | submit FILE|- | verify ID
    schedcpctl policy promote|retire ID | report DIGEST
    schedcpctl token inspect TOKEN|-
    schedcpctl keys list | trusted | rotate | export [--kid KID] [-o FILE]
    schedcpctl bundle export ID [--token TOKEN] -o FILE|- | bundle import FILE|-
    schedcpctl deployments [--live] | deployment show ID
    schedcpctl plan TOKEN | deploy TOKEN [--plan] [--wait [--timeout S]]
    schedcpctl rollback ID | hold ID [--release-on-exit] [--timeout S]
    schedcpctl explain PID|DEPLOYMENT
    schedcpctl watch [ID ...] [--count N] [--timeout S]

Human-readable tables by default, the daemon's JSON with ``--json`` (watch:
one JSON object per line).  Progress on long waits goes to stderr.
Exit status: 0 success, 1 other error, 2 usage, 3 daemon not running or bus
unreachable, 4 access denied, 5 invalid argument, 6 the deployment ended
reverted or failed (deploy --wait, hold), 7 --timeout ran out, 130
interrupted (deploy --wait).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from schedcpd import cli_deploy, cli_explain, cli_fleet, cli_observe
from schedcpd.cli_output import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_NOT_RUNNING,
    EXIT_USAGE,
    Outcome,
    Progress,
    read_arg,
    table,
)
from schedcpd.dbus.bus import bus_from_spec
from schedcpd.dbus.client import CallFailed, Client
from schedcpd.errors import SchedcpError

_NOT_RUNNING = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
}
_EXIT_BY_ERROR = {
    "org.schedcp.Control1.Error.AccessDenied": EXIT_DENIED,
    "org.schedcp.Control1.Error.NotOwner": EXIT_DENIED,
    "org.freedesktop.DBus.Error.AccessDenied": EXIT_DENIED,
    "org.schedcp.Control1.Error.InvalidArgument": EXIT_INVALID,
    **dict.fromkeys(_NOT_RUNNING, EXIT_NOT_RUNNING),
}
_table = table


def _show_status(status: dict[str, Any]) -> str:
    lines = [
        f"schedcpd {status['version']} (API {status['api_version']}), pid {status['pid']}, "
        f"up {status['uptime_seconds']:.0f} s",
        f"kernel:        {status['kernel']}",
        f"bus:           {status.get('bus')}",
        f"authorization: {status.get('authorization')}",
        f"state:         {status.get('state_dir')}",
    ]
    metrics = status.get("metrics")
    lines.append("metrics:       " + (f"http://{metrics['address']}:{metrics['port']}/metrics"
                                      if metrics else "off"))
    lines += ["", _table(
        ["plugin", "state", "origin", "error"],
        [(p["name"], "enabled" if p["enabled"] else "DISABLED", p["origin"], p["error"] or "")
         for p in status["plugins"]],
    )]
    return "\n".join(lines)


def _show_subsystems(subsystems: dict[str, Any]) -> str:
    rows = []
    for name, desc in sorted(subsystems.items()):
        for cap, info in sorted(desc.get("capabilities", {}).items()):
            rows.append((name, cap, "yes" if info.get("available") else "no",
                         info.get("reason", "")))
    return _table(["subsystem", "capability", "available", "detail"], rows) if rows \
        else "no subsystems are enabled"


def _show_audit(records: list[dict[str, Any]]) -> str:
    import time

    return _table(
        ["time", "uid", "pid", "method", "result", "arguments"],
        [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])), r["uid"], r["pid"],
          r["method"], r["result"], r["args_digest"][:12]) for r in records],
    )


def _show_policies(policies: list[dict[str, Any]]) -> str:
    if not policies:
        return "no matching policies"
    return _table(["id", "name", "track", "state", "provenance", "score"],
                  [(p["id"][:12], p["name"], p["track"], p["state"], p["provenance"],
                    p.get("score", "")) for p in policies])


def _show_report(token: str, report: dict[str, Any]) -> str:
    lines = [f"policy {report['name']} ({report['policy_id'][:12]}): "
             f"{'PASSED' if report['passed'] else 'FAILED'}"]
    for stage in report["stages"]:
        state = "pass" if stage["passed"] else ("skip" if stage["skipped"] else "FAIL")
        if stage["skipped"] and stage["passed"]:
            state = "skip"
        lines.append(f"  {stage['stage']:<8} {state:<5} {stage['seconds']:.2f}s  "
                     f"{stage['skipped']}")
        for f in stage["findings"]:
            lines.append(f"      {f['severity']}: {f['code']} {f.get('field') or ''}: "
                         f"{f['message']}")
    if token:
        lines.append(f"token: {token}")
    return "\n".join(lines)


async def _policy(client: Client, args: argparse.Namespace,
                  progress: Progress) -> tuple[Any, str]:
    action = args.action
    if action == "list":
        result = await client.call_json("ListPolicies", "s", " ".join(args.query))
        return result, _show_policies(result)
    if action == "show":
        result = await client.call_json("GetPolicy", "s", args.id)
        return result, result["document"]
    if action == "history":
        result = await client.call_json("GetPolicyHistory", "s", args.id)
        return result, json.dumps(result, indent=2)
    if action == "submit":
        policy_id = await client.call("SubmitPolicy", "s", read_arg(args.file))
        return {"policy_id": policy_id}, policy_id
    if action == "verify":
        token, report = await progress.waiting(f"verifying {args.id[:12]}",
                                               client.call("VerifyPolicy", "s", args.id))
        report = json.loads(report)
        return {"token": token, "report": report}, _show_report(token, report)
    if action == "report":
        report = await client.call_json("GetVerificationReport", "s", args.digest)
        return report, _show_report("", report)
    state = {"promote": "proven", "retire": "retired"}[action]
    result = await client.call_json("SetPolicyState", "ss", args.id, state)
    return result, f"{result['name']} ({result['id'][:12]}) is now {result['state']}"


async def _inspect_token(client: Client, text: str) -> tuple[Any, str]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from schedcpd import tokens

    claims, signed, signature = tokens.decode(text.strip())
    keys = {k["kid"]: k for k in await client.call_json("GetVerifierKeys")}
    key = keys.get(claims["kid"])
    if key is None:
        verdict = f"signed by unknown key {claims['kid']}"
    else:
        import base64

        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
        try:
            public.verify(signature, signed)
            verdict = f"signature valid (key {claims['kid']})"
        except InvalidSignature:
            verdict = "signature INVALID"
    import time

    left = claims["exp"] - time.time()
    lines = [verdict, f"expires in {left:.0f} s" if left > 0 else "EXPIRED"]
    lines += [f"{k}: {v}" for k, v in sorted(claims.items())]
    return {"claims": claims, "verdict": verdict}, "\n".join(lines)


async def _command(client: Client, args: argparse.Namespace, progress: Progress) -> Outcome:
    """Run one command; its outcome."""
    command = args.command
    if command == "status":
        result: Any = await client.call_json("GetStatus")
        return Outcome(result, _show_status(result))
    if command == "subsystems":
        result = (await client.call_json("GetStatus"))["subsystems"]
        return Outcome(result, _show_subsystems(result))
    if command == "audit":
        result = await client.call_json("GetAudit", "us", args.limit, args.method or "")
        return Outcome(result, _show_audit(result))
    if command == "reload":
        result = await client.call_json("Reload")
        return Outcome(result, f"reloaded; changed: {', '.join(result['changed']) or 'nothing'}")
    if command == "policy":
        return Outcome(*await _policy(client, args, progress))
    if command == "token":
        return Outcome(*await _inspect_token(client, read_arg(args.token)))
    if command == "keys":
        return await cli_fleet.keys(client, args)
    if command == "bundle":
        return await cli_fleet.bundle(client, args, progress)
    if command == "summary":
        return await cli_observe.summary(client, args)
    if command == "probe":
        if args.action == "list":
            return await cli_observe.probe_list(client, args)
        return await cli_observe.probe_run(client, args, progress)
    if command == "perf":
        return await cli_observe.perf(client, args, progress)
    if command == "deployments":
        return await cli_deploy.deployments(client, args)
    if command == "deployment":
        return await cli_deploy.show(client, args)
    if command == "plan":
        return await cli_deploy.plan(client, args)
    if command in ("deploy", "hold", "watch"):
        run = {"deploy": cli_deploy.deploy, "hold": cli_deploy.hold,
               "watch": cli_deploy.watch}[command]
        return await run(client, args, progress)
    if command == "rollback":
        return await cli_deploy.rollback(client, args)
    if command == "explain":
        return await cli_explain.explain(client, args)
    raise AssertionError(command)  # pragma: no cover - argparse rejects it first


async def _run(args: argparse.Namespace) -> int:
    try:
        bus = await bus_from_spec(args.bus).connect()
    except Exception as err:
        print(f"schedcpctl: cannot connect to the {args.bus} bus: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        outcome = await _command(Client(bus), args, Progress(args.quiet))
    except (OSError, SchedcpError) as err:
        print(f"schedcpctl: {err}", file=sys.stderr)
        return EXIT_INVALID if isinstance(err, SchedcpError) else EXIT_ERROR
    except CallFailed as err:
        code = _EXIT_BY_ERROR.get(err.name, EXIT_ERROR)
        if code == EXIT_NOT_RUNNING:
            print(f"schedcpctl: schedcpd is not running on the {args.bus} bus ({err.name})",
                  file=sys.stderr)
        elif code == EXIT_DENIED:
            print(f"schedcpctl: access denied: {err}", file=sys.stderr)
        else:
            print(f"schedcpctl: {err.name}: {err}", file=sys.stderr)
        return code
    finally:
        bus.disconnect()
    if not outcome.printed:
        print(json.dumps(outcome.data, indent=2, sort_keys=True) if args.json else outcome.text)
    return outcome.code


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schedcpctl", description="Control schedcpd.")
    parser.add_argument("--bus", default=os.environ.get("SCHEDCP_BUS", "system"),
                        help="system (default), session, or a D-Bus address; "
                             "also $SCHEDCP_BUS")
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress lines on stderr during long waits")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="daemon status and plugins")
    sub.add_parser("subsystems", help="subsystems and their capabilities")
    audit = sub.add_parser("audit", help="recent mutating calls (admin)")
    audit.add_argument("--limit", type=int, default=20)
    audit.add_argument("--method", default="")
    sub.add_parser("reload", help="reload the daemon's configuration (admin)")
    summary = sub.add_parser("summary", help="the workload summary")
    summary.add_argument("--detail", choices=("brief", "normal", "full"), default="brief")
    probe = sub.add_parser("probe", help="catalogue BPF probes (run: submit right)")
    prsub = probe.add_subparsers(dest="action", required=True)
    prsub.add_parser("list", help="the probe catalogue")
    prun = prsub.add_parser("run", help="attach a probe for a while and print what it saw")
    prun.add_argument("name")
    prun.add_argument("--seconds", type=_positive, default=5.0)
    prun.add_argument("--pid", type=int, default=0, help="only this process (default: all)")
    perf = sub.add_parser("perf", help="perf stat of a process, a cgroup or the system "
                                       "(submit right)")
    target = perf.add_mutually_exclusive_group()
    target.add_argument("--pid", type=int, default=0)
    target.add_argument("--cgroup", default="")
    perf.add_argument("--seconds", type=_positive, default=5.0)
    policy = sub.add_parser("policy", help="the policy repository and verifier")
    psub = policy.add_subparsers(dest="action", required=True)
    plist = psub.add_parser("list", help="policies, ranked for a workload description")
    plist.add_argument("query", nargs="*")
    for name, helptext in (("show", "a policy's document"),
                           ("history", "deployments and antipatterns"),
                           ("verify", "run the verifier; prints the report and a token"),
                           ("promote", "mark proven (admin)"), ("retire", "retire (admin)")):
        psub.add_parser(name, help=helptext).add_argument("id")
    psub.add_parser("submit", help="submit a TOML policy (file or -)").add_argument("file")
    psub.add_parser("report", help="a kept verification report, by the digest a token "
                                   "names").add_argument("digest")
    token = sub.add_parser("token", help="deployment tokens")
    tsub = token.add_subparsers(dest="action", required=True)
    tsub.add_parser("inspect", help="decode a token and check its signature").add_argument(
        "token", help="the token, or - for stdin")
    cli_fleet.add_parsers(sub)
    deployments = sub.add_parser("deployments", help="the newest deployments")
    deployments.add_argument("--live", action="store_true", help="only those not ended")
    dep = sub.add_parser("deployment", help="one deployment")
    dsub = dep.add_subparsers(dest="action", required=True)
    dsub.add_parser("show", help="state, targets, token, trip, history").add_argument("id")
    sub.add_parser("plan", help="advice mode: every value a token's deployment would write "
                                "(deploy right)").add_argument("token", help="token, file or -")
    deploy = sub.add_parser("deploy", help="redeem a token and start a canary deployment "
                                           "(deploy right)")
    deploy.add_argument("token", help="the token, a file holding it, or - for stdin")
    deploy.add_argument("--plan", action="store_true",
                        help="advice mode: show what it would write, write nothing")
    deploy.add_argument("--wait", action="store_true",
                        help="follow the canary and probation until active, reverted or failed")
    deploy.add_argument("--timeout", type=_positive, help="with --wait: give up after S s")
    sub.add_parser("rollback", help="restore what a deployment changed (its owner or an "
                                    "admin)").add_argument("id")
    hold = sub.add_parser("hold", help="keep a deployment only while this command runs")
    hold.add_argument("id")
    hold.add_argument("--release-on-exit", action="store_true",
                      help="release the hold when done: the deployment stays")
    hold.add_argument("--timeout", type=_positive, help="end the hold after S s")
    sub.add_parser("explain", help="why a process has its values, or what a deployment "
                                   "did").add_argument("subject", help="PID or deployment id")
    watch = sub.add_parser("watch", help="follow DeploymentChanged until interrupted")
    watch.add_argument("ids", nargs="*", help="only these deployments")
    watch.add_argument("--count", type=_count, help="stop after N changes")
    watch.add_argument("--timeout", type=_positive, help="stop after S s")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``schedcpctl`` command."""
    args = _parser().parse_args(argv)
    if args.command == "audit" and not 1 <= args.limit <= 1000:
        print("schedcpctl: --limit must be 1..1000", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if args.command == "deploy" and args.timeout is not None and not args.wait:
        print("schedcpctl: deploy --timeout needs --wait", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        code = asyncio.run(_run(args))
    except KeyboardInterrupt:  # before a command set up its own stop (watch, hold)
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
