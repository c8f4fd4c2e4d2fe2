"""Circuit-breaker benchmark: regression onset -> decision -> restored state.

    python bench/breaker.py [--injections 10] [--kind starve|loader|scx-guest]

Starts a private bus and schedcpd with its default breaker settings and
injects ``--injections`` faults, a fresh policy version each time (so
back-off does not apply), deployed through Deploy with a token:

- ``starve`` (default): a latency probe (periodic 2 ms waker) and two CPU
  hogs; each injection is a verified policy that puts the probe at
  SCHED_IDLE.  Onset is the moment the canary was applied (the ``canary``
  transition).
- ``loader``: a T2 (sched_ext) policy against the FAKE sched_ext of
  tests/deploy/fake_sched_ext.py (this host's kernel has none; the token is
  minted without the micro-VM verifier); once the deployment is active the
  loader process is killed (SIGKILL).  Onset is the kill.
- ``scx-guest``: real sched_ext in the guest host (plugins/scheduler/microvm,
  TCG here: the figures are emulated).  The host's daemon verifies the
  starving latency policy of tests/microvm/test_t2_guest.py once (its
  token binds the object the verifier loaded); each injection is a fresh
  version of it whose token binds the same object, minted with the host
  daemon's key.  One boot runs every injection: a 2 ms probe and two CPU
  hogs, Deploy, the breaker's trip.  Onset is the ``canary`` transition.

The decision and restore times come from the trip record.  Goal: detection
<= 3 s, restore <= 1 s after the decision, 100 % reverted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.deploy.conftest import Workload, forced_token, policy_text, verified_token
from tests.deploy.fake_sched_ext import FakeSchedExt
from tests.harness import PrivateBus, SchedcpdProcess, call
from tests.harness import wait_deployment as wait_state

CONFIG = "[metrics]\nenabled = false\n[verifier]\ndynamic_seconds = 1.0\n"
T2 = ('[policy]\nname = "bench-loader-{i}"\ndescription = "breaker benchmark"\n'
      'track = "T2"\n[scx]\nscheduler = "vtime"\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", type=int, default=10)
    parser.add_argument("--kind", choices=("starve", "loader", "scx-guest"), default="starve")
    args = parser.parse_args()
    rows = scx_guest(args.injections) if args.kind == "scx-guest" else host(args)
    detections = [r["detection_s"] for r in rows if r["detection_s"] is not None]
    restores = [r["restore_s"] for r in rows if r["restore_s"] is not None]
    summary = {
        "kind": args.kind + (" (emulated: TCG)" if args.kind == "scx-guest" else ""),
        "injections": len(rows),
        "reverted": sum(r["state"] == "reverted" for r in rows),
        "detection_s": {"median": statistics.median(detections), "max": max(detections),
                        "min": min(detections)} if detections else None,
        "restore_s": {"median": statistics.median(restores), "max": max(restores)}
        if restores else None,
    }
    print(json.dumps(summary, indent=2))


def row(info: dict[str, Any], onset: float | None) -> dict[str, Any]:
    """One injection's outcome from its deployment record."""
    if onset is None:
        onset = next((e["time"] for e in info["events"] if e["state"] == "canary"), None)
    trip = info["trip"] or {}
    out = {"deployment": info["id"], "state": info["state"],
           "detection_s": round(trip["decided_at"] - onset, 3) if trip and onset else None,
           "restore_s": trip.get("decision_to_restore_s"),
           "guard": trip.get("guard"), "ratio": trip.get("ratio"),
           "tripped_in": next((e["state"] for e in reversed(info["events"])
                               if e["state"] in ("canary", "active")), None),
           "loadavg": float(Path("/proc/loadavg").read_text().split()[0])}
    print(json.dumps(out), flush=True)
    return out


def scx_guest(injections: int) -> list[dict[str, Any]]:
    """Every injection in one boot of the sched_ext guest host."""
    from plugins.scheduler.microvm import MicroVM, host, rootfs
    from tests.microvm import test_t2_guest as t2

    vm = MicroVM().prepare()
    files: dict[str, Path | bytes] = {
        "t2_guest_scenario.py": Path(t2.__file__).parent / "t2_guest_scenario.py",
        "schedcpd.toml": t2.GUEST_CONFIG.encode()}
    config = CONFIG + "[bus]\ncall_timeout_seconds = 400\n"
    with PrivateBus() as bus, SchedcpdProcess(bus.address, config) as daemon:
        policy_id = call(daemon.address, "SubmitPolicy", "s", t2.LATENCY)
        verified, report = t2._call(daemon.address, "VerifyPolicy", "s", policy_id, timeout=420)
        assert verified, report[:4000]
        claims = json.loads(base64.urlsafe_b64decode(verified.split(".")[1] + "=="))
        for i in range(injections):
            text = t2.LATENCY.replace('"t2-guest-starve"', f'"bench-scx-starve-{i}"')
            policy_id = call(daemon.address, "SubmitPolicy", "s", text)
            files[f"latency-{i}.toml"] = text.encode()
            files[f"latency-{i}.token"] = forced_token(
                daemon.state_dir, daemon.address, policy_id, artifact=claims["artifact"],
                ttl=3600).encode()  # the last injection runs long after the boot
        key = next((daemon.state_dir / "keys").glob("*.pub"))
        files[key.name] = key.read_bytes()
    python = f"{rootfs.venv_dir()}/bin/python3"
    steps = [f"regression=latency-{i}" for i in range(injections)]
    result = host.GuestHost(vm).prepare().run(
        host.command_script([python, "/run/job/t2_guest_scenario.py", *steps]), files,
        timeout=120 + 60 * injections, boot_timeout=180)
    error = host.problem(result)
    if error is not None:
        raise SystemExit(f"the guest host failed: {error}")
    rows = []
    for line in result.output.get(host.COMMAND_STEP, []):
        if line.startswith("RESULT regression="):
            data = json.loads(line.split(" ", 2)[2])
            if "exception" in data:
                print(json.dumps(data), flush=True)
                continue
            rows.append(row(data["deployment"], None))
    return rows


def host(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Injections on this host (starve: real kernel; loader: the FAKE sched_ext)."""
    rows = []
    fake = FakeSchedExt() if args.kind == "loader" else None
    config = CONFIG + (fake.config() if fake else "")
    with PrivateBus() as bus, SchedcpdProcess(bus.address, config) as daemon:
        workload = Workload(hogs=2 if fake is None else 0)
        try:
            time.sleep(0.5)
            for i in range(args.injections):
                onset = None
                if fake is not None:
                    policy_id = call(daemon.address, "SubmitPolicy", "s", T2.format(i=i))
                    token = forced_token(daemon.state_dir, daemon.address, policy_id)
                    dep = call(daemon.address, "Deploy", "s", token)
                    wait_state(daemon.address, dep, {"active"}, 30)
                    pid = fake.loader_pid()
                    assert pid is not None
                    onset = time.time()
                    os.kill(pid, signal.SIGKILL)
                else:
                    text = policy_text(f"bench-starve-{i}", [
                        ("probe", [workload.probe.pid], '{ policy = "idle" }')])
                    _, token = verified_token(daemon.address, text)
                    dep = call(daemon.address, "Deploy", "s", token)
                try:
                    info = wait_state(daemon.address, dep, {"reverted", "failed"}, 30)
                except AssertionError:
                    # Missed: roll back so the next injection starts from defaults.
                    call(daemon.address, "Rollback", "s", dep)
                    info = json.loads(call(daemon.address, "GetDeployment", "s", dep))
                    info["state"] = "missed"
                rows.append(row(info, onset))
        finally:
            workload.stop()
            if fake is not None:
                fake.close()
    return rows


if __name__ == "__main__":
    main()
