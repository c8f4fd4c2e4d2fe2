"""``./scripts/demo --t2``: a sched_ext scheduler deployed, measured and undone, in the guest.

This host's kernel has no sched_ext, so the T2 story runs in the sched_ext
guest host (plugins/scheduler/microvm/host.py; TCG here, so every time is
emulated and only ratios mean something):

1. this host's schedcpd (on a private system-like bus) verifies
   policies/t2/scx-vtime.toml: schema, static rules, the BPF verifier and
   a dynamic run in its micro-VM; the token binds the object it loaded;
2. the guest boots the same kernel with this machine's installed schedcp;
   its schedcpd trusts the host daemon's public key;
3. in the guest (scripts/demo_t2_guest.py, through ``schedcpctl`` on the
   guest's system bus): hackbench under EEVDF, ``policy submit``,
   ``deploy --wait`` (canary, probation, breaker), hackbench under the
   scheduler, ``rollback``;
4. here: the before/after table, and whether sched_ext ended disabled with
   no task left in SCHED_EXT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.scheduler.microvm import FetchError, MicroVM, host, rootfs
from schedcp_bench.services import PrivateBus, SchedcpdProcess
from schedcpd.dbus.bus import MessageBus
from schedcpd.dbus.client import CallFailed, Client

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "t2" / "scx-vtime.toml"
HOST_CONFIG = """[metrics]
enabled = false
[bus]
call_timeout_seconds = 400
[verifier]
dynamic_seconds = 1.0
"""
GUEST_CONFIG = host.trusted_config()


def say(text: str) -> None:
    """Print a step of the demo."""
    print(f"\n== {text}", flush=True)


def call(address: str, member: str, signature: str, *body: Any) -> Any:
    """One Manager call; its result (exits with the daemon's error otherwise)."""
    async def once() -> Any:
        bus = await MessageBus(bus_address=address).connect()
        try:
            return await Client(bus).call(member, signature, *body)
        finally:
            bus.disconnect()

    try:
        return asyncio.run(once())
    except CallFailed as err:
        raise SystemExit(f"{member}: {err.name}: {err}") from err


def verify() -> dict[str, Any]:
    """The host daemon verifies the policy: its token and public key."""
    with PrivateBus() as bus, SchedcpdProcess(bus.address, HOST_CONFIG) as daemon:
        policy_id = call(bus.address, "SubmitPolicy", "s", POLICY.read_text())
        token, report = call(bus.address, "VerifyPolicy", "s", policy_id)
        stages = [(s["stage"], s.get("verdict") or ("passed" if s["passed"] else "failed"))
                  for s in json.loads(report)["stages"]]
        print("verifier: " + ", ".join(f"{name} {verdict}" for name, verdict in stages))
        if not token:
            raise SystemExit("the verifier refused the policy (report above)")
        key = next((daemon.state_dir / "keys").glob("*.pub"))
        return {"token": token, "key": (key.name, key.read_bytes())}


def main() -> int:
    """Run the T2 demo; exit 0 when sched_ext ended disabled and every task restored."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t2", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3, help="hackbench runs per arm")
    args = parser.parse_args()
    say("prepare the sched_ext micro-VM (kernel, schedulers, loader; cached)")
    try:
        vm = MicroVM().prepare()
    except FetchError as err:
        print(f"cannot download the guest kernel or tools: {err}", file=sys.stderr)
        return 3
    say(f"this host's schedcpd verifies {POLICY.relative_to(ROOT)} in its micro-VM")
    verified = verify()
    say("boot the sched_ext guest host (TCG: emulated times, ratios only)")
    files: dict[str, Path | bytes] = {
        "demo_t2_guest.py": Path(__file__).with_name("demo_t2_guest.py"),
        "schedcpd.toml": GUEST_CONFIG.encode(), "policy.toml": POLICY.read_bytes(),
        "policy.token": verified["token"].encode(), verified["key"][0]: verified["key"][1]}
    python = f"{rootfs.venv_dir()}/bin/python3"
    result = host.GuestHost(vm).prepare().run(
        host.command_script([python, "/run/job/demo_t2_guest.py", str(args.reps)]), files,
        timeout=300 + 60 * args.reps, boot_timeout=180,
        on_output=lambda step, line: print(f"  guest: {line}", flush=True)
        if step == host.COMMAND_STEP and not line.startswith("RESULT ") else None)
    error = host.problem(result)
    if error is not None:
        print(f"the guest host failed: {error}", file=sys.stderr)
        return 3
    lines = [ln for ln in result.output.get(host.COMMAND_STEP, []) if ln.startswith("RESULT ")]
    if not lines:
        print("the guest reported no result", file=sys.stderr)
        return 1
    data = json.loads(lines[-1].split(" ", 1)[1])
    eevdf, scx = statistics.median(data["eevdf_s"]), statistics.median(data["scx_s"])
    say("before / after: hackbench -g 4 -l 200 -s 100 in the guest (median wall s)")
    print(f"{'EEVDF':28} {eevdf:8.2f}")
    print(f"{'sched_ext ' + data['ops']:28} {scx:8.2f}   ratio {scx / eevdf:.2f} (emulated)")
    print(f"deployment {data['deployment']}: {data['deployed_state']} while measured, "
          f"{data['final']} after rollback")
    restored = data["state_after"] == "disabled" and data["in_ext_after"] == 0
    say("sched_ext disabled, every task back in its class" if restored else
        f"NOT RESTORED: state {data['state_after']}, {data['in_ext_after']} tasks in SCHED_EXT")
    return 0 if restored else 1


if __name__ == "__main__":
    sys.exit(main())
