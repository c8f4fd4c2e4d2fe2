"""schedcpctl: talk to schedcpd over D-Bus.

    schedcpctl [--bus system|session|ADDRESS] [--json] status
    schedcpctl subsystems
    schedcpctl audit [--limit N] [--method NAME]
    schedcpctl reload
    schedcpctl policy list [QUERY] | show ID | history ID | submit FILE|- | verify ID
    schedcpctl policy promote|retire ID
    schedcpctl token inspect TOKEN|-

Human-readable tables by default, the daemon's JSON with ``--json``.
Exit status: 0 success, 1 other error, 2 usage, 3 daemon not running or bus
unreachable, 4 access denied, 5 invalid argument.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from dbus_fast import Message, MessageType

from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus, bus_from_spec
from schedcpd.errors import SchedcpError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_DENIED, EXIT_INVALID = range(6)

_NOT_RUNNING = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
}
_EXIT_BY_ERROR = {
    "org.schedcp.Control1.Error.AccessDenied": EXIT_DENIED,
    "org.freedesktop.DBus.Error.AccessDenied": EXIT_DENIED,
    "org.schedcp.Control1.Error.InvalidArgument": EXIT_INVALID,
    **dict.fromkeys(_NOT_RUNNING, EXIT_NOT_RUNNING),
}


class CallFailed(Exception):
    """The daemon (or the bus) answered with an error."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.code = _EXIT_BY_ERROR.get(name, EXIT_ERROR)


class Client:
    """A minimal asynchronous client of the Manager API."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def call(self, member: str, signature: str = "", *body: Any) -> Any:
        """Call a Manager method; return its result (a list when it has several)."""
        reply = await self.bus.call(Message(
            destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
            member=member, signature=signature, body=list(body),
        ))
        if reply is None:
            raise CallFailed("org.freedesktop.DBus.Error.NoReply", "no reply")
        if reply.message_type == MessageType.ERROR:
            raise CallFailed(reply.error_name or "", reply.body[0] if reply.body else "")
        if len(reply.body) > 1:
            return list(reply.body)
        return reply.body[0] if reply.body else None

    async def call_json(self, member: str, signature: str = "", *body: Any) -> Any:
        """Call a method that returns JSON text and decode it."""
        return json.loads(await self.call(member, signature, *body))


def _table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


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


def _read_arg(value: str) -> str:
    if value == "-":
        return sys.stdin.read()
    if value.startswith("schedcp1.") or "\n" in value:
        return value
    with open(value, encoding="utf-8") as f:
        return f.read()


async def _policy(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
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
        policy_id = await client.call("SubmitPolicy", "s", _read_arg(args.file))
        return {"policy_id": policy_id}, policy_id
    if action == "verify":
        token, report = await client.call("VerifyPolicy", "s", args.id)
        report = json.loads(report)
        return {"token": token, "report": report}, _show_report(token, report)
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


async def _run(args: argparse.Namespace) -> int:
    try:
        bus = await bus_from_spec(args.bus).connect()
    except Exception as err:
        print(f"schedcpctl: cannot connect to the {args.bus} bus: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    client = Client(bus)
    try:
        if args.command == "status":
            result: Any = await client.call_json("GetStatus")
            text = _show_status(result)
        elif args.command == "subsystems":
            result = (await client.call_json("GetStatus"))["subsystems"]
            text = _show_subsystems(result)
        elif args.command == "audit":
            result = await client.call_json("GetAudit", "us", args.limit, args.method or "")
            text = _show_audit(result)
        elif args.command == "reload":
            result = await client.call_json("Reload")
            text = f"reloaded; changed: {', '.join(result['changed']) or 'nothing'}"
        elif args.command == "policy":
            result, text = await _policy(client, args)
        elif args.command == "token":
            result, text = await _inspect_token(client, _read_arg(args.token))
        else:  # pragma: no cover - argparse rejects it first
            raise AssertionError(args.command)
    except (OSError, SchedcpError) as err:
        print(f"schedcpctl: {err}", file=sys.stderr)
        return EXIT_INVALID if isinstance(err, SchedcpError) else EXIT_ERROR
    except CallFailed as err:
        if err.code == EXIT_NOT_RUNNING:
            print(f"schedcpctl: schedcpd is not running on the {args.bus} bus ({err.name})",
                  file=sys.stderr)
        elif err.code == EXIT_DENIED:
            print(f"schedcpctl: access denied: {err}", file=sys.stderr)
        else:
            print(f"schedcpctl: {err.name}: {err}", file=sys.stderr)
        return err.code
    finally:
        bus.disconnect()
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schedcpctl", description="Control schedcpd.")
    parser.add_argument("--bus", default=os.environ.get("SCHEDCP_BUS", "system"),
                        help="system (default), session, or a D-Bus address; "
                             "also $SCHEDCP_BUS")
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="daemon status and plugins")
    sub.add_parser("subsystems", help="subsystems and their capabilities")
    audit = sub.add_parser("audit", help="recent mutating calls (admin)")
    audit.add_argument("--limit", type=int, default=20)
    audit.add_argument("--method", default="")
    sub.add_parser("reload", help="reload the daemon's configuration (admin)")
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
    token = sub.add_parser("token", help="deployment tokens")
    tsub = token.add_subparsers(dest="action", required=True)
    tsub.add_parser("inspect", help="decode a token and check its signature").add_argument(
        "token", help="the token, or - for stdin")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``schedcpctl`` command."""
    args = _parser().parse_args(argv)
    if args.command == "audit" and not 1 <= args.limit <= 1000:
        print("schedcpctl: --limit must be 1..1000", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
