"""schedcpctl commands for many hosts: verifier keys and policy bundles (docs/fleet.md).

    schedcpctl keys list | trusted | rotate | export [--kid KID] [-o FILE]
    schedcpctl bundle export ID [--token TOKEN|FILE|-] -o FILE|-
    schedcpctl bundle import FILE|-
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from schedcpd import tokens
from schedcpd.cli_output import Outcome, Progress, read_arg, table
from schedcpd.dbus.client import Client
from schedcpd.errors import InvalidArgument


def add_parsers(sub: Any) -> None:
    """The ``keys`` and ``bundle`` commands."""
    keys = sub.add_parser("keys", help="verifier keys: this host's, and those it trusts")
    ksub = keys.add_subparsers(dest="action", required=True)
    ksub.add_parser("list", help="this daemon's signing keys (current and retired)")
    ksub.add_parser("trusted", help="trusted verifier keys, revocations, unusable files")
    ksub.add_parser("rotate", help="make a new signing key; the old one verifies its tokens "
                                   "until they expire (admin)")
    export = ksub.add_parser("export", help="this host's public verifier key (PEM), for "
                                            "other hosts' trusted-keys.d")
    export.add_argument("--kid", help="another key than the current one")
    export.add_argument("-o", "--output", help="write it to FILE (default: stdout)")
    bundle = sub.add_parser("bundle", help="policy bundles: policy, report and token as one "
                                           "file (verify right)")
    bsub = bundle.add_subparsers(dest="action", required=True)
    bexport = bsub.add_parser("export", help="verify a policy (or take a token of it) and "
                                             "write its bundle")
    bexport.add_argument("id", help="the policy version (id or unique prefix)")
    bexport.add_argument("--token", help="bundle this token (inline, file or -) instead of "
                                         "verifying now")
    bexport.add_argument("-o", "--output", required=True, help="the bundle file, - for stdout")
    bimport = bsub.add_parser("import", help="check a bundle and keep its policy and report; "
                                             "prints the token to deploy")
    bimport.add_argument("file", help="the bundle file, or - for stdin")


def _write(path: str, text: str, mode: int) -> None:
    """``text`` to ``path`` (atomically, with ``mode``) or to stdout for ``-``."""
    if path == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)


async def keys(client: Client, args: argparse.Namespace) -> Outcome:
    """``keys list | trusted | rotate | export``."""
    if args.action == "rotate":
        kid = await client.call("RotateVerifierKey")
        return Outcome({"kid": kid}, f"new signing key {kid}; export it to the hosts that "
                                     "trust this one (schedcpctl keys export)")
    if args.action == "trusted":
        info = await client.call_json("GetTrustedKeys")
        lines = [f"trusted keys:  {info['trusted_dir'] or '(none: trusted_keys_dir is empty)'}",
                 f"revoked list:  {info['revoked_file'] or '(none)'}"]
        if info["keys"]:
            lines += ["", table(["kid", "file", "revoked", "fingerprint"],
                                [(k["kid"], k["file"], "REVOKED" if k["revoked"] else "no",
                                  k["fingerprint"]) for k in info["keys"]])]
        if info["revoked"]:
            lines.append("revoked ids:   " + ", ".join(info["revoked"]))
        lines += [f"unusable:      {name}: {why}" for name, why in sorted(info["errors"].items())]
        return Outcome(info, "\n".join(lines))
    own: list[dict[str, Any]] = await client.call_json("GetVerifierKeys")
    if args.action == "list":
        return Outcome(own, table(
            ["kid", "state", "created", "fingerprint"],
            [(k["kid"], "current" if k.get("current") else "retired",
              time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k["created"])),
              k.get("fingerprint", "")) for k in own]))
    wanted = [k for k in own if (k["kid"] == args.kid if args.kid else k.get("current"))]
    if not wanted:
        raise InvalidArgument(f"this daemon holds no key {args.kid}" if args.kid
                              else "this daemon has no current key")
    key = wanted[0]
    if args.output:
        _write(args.output, key["public_key_pem"], 0o644)
        return Outcome(key, f"public key {key['kid']} written to {args.output}; put it in "
                            "other hosts' trusted-keys.d")
    return Outcome(key, key["public_key_pem"].rstrip("\n"))


async def bundle(client: Client, args: argparse.Namespace, progress: Progress) -> Outcome:
    """``bundle export | import``."""
    if args.action == "import":
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        result = await client.call_json("ImportBundle", "s", text)
        left = result["expires"] - time.time()
        return Outcome(result, "\n".join([
            f"imported {result['name']} ({result['policy_id'][:12]}, {result['track']}): "
            f"{result['state']}",
            f"signed by key {result['kid']} for uid {result['uid']}; the token expires in "
            f"{left:.0f} s and deploys once on this host:",
            result["token"]]))
    policy = await client.call_json("GetPolicy", "s", args.id)
    if args.token:
        token = read_arg(args.token).strip()
        claims = tokens.decode(token)[0]
        if claims["policy_id"] != policy["id"]:
            raise InvalidArgument(f"the token is for policy {claims['policy_id'][:12]}, not "
                                  f"{policy['id'][:12]}")
    else:
        token, _report = await progress.waiting(f"verifying {policy['id'][:12]}",
                                                client.call("VerifyPolicy", "s", policy["id"]))
        if not token:
            raise InvalidArgument(f"policy {policy['id'][:12]} did not pass verification "
                                  f"(schedcpctl policy verify {policy['id'][:12]} shows why): "
                                  "no bundle")
    text = await client.call("ExportBundle", "s", token)
    _write(args.output, text, 0o600)  # the token in it deploys: not for every reader
    claims = tokens.decode(token)[0]
    data = {"policy_id": policy["id"], "name": policy["name"], "kid": claims["kid"],
            "expires": claims["exp"], "output": args.output}
    if args.output == "-":
        return Outcome(data, printed=True)
    return Outcome(data, f"bundle of {policy['name']} ({policy['id'][:12]}) signed by key "
                         f"{claims['kid']} written to {args.output}")
