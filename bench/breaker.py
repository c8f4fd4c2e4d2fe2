"""Circuit-breaker benchmark: regression onset -> decision -> restored state.

    python bench/breaker.py [--injections 10] [--kind starve|loader]

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

The decision and restore times come from the trip record.  Goal: detection
<= 3 s, restore <= 1 s after the decision, 100 % reverted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

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
    parser.add_argument("--kind", choices=("starve", "loader"), default="starve")
    args = parser.parse_args()
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
                if onset is None:
                    onset = next((e["time"] for e in info["events"] if e["state"] == "canary"),
                                 None)
                trip = info["trip"] or {}
                row = {"deployment": dep, "state": info["state"],
                       "detection_s": round(trip["decided_at"] - onset, 3)
                       if trip and onset else None,
                       "restore_s": trip.get("decision_to_restore_s"),
                       "guard": trip.get("guard"), "ratio": trip.get("ratio"),
                       "tripped_in": next((e["state"] for e in reversed(info["events"])
                                           if e["state"] in ("canary", "active")), None),
                       "loadavg": float(Path("/proc/loadavg").read_text().split()[0])}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            workload.stop()
            if fake is not None:
                fake.close()
    detections = [r["detection_s"] for r in rows if r["detection_s"] is not None]
    restores = [r["restore_s"] for r in rows if r["restore_s"] is not None]
    summary = {
        "injections": len(rows),
        "reverted": sum(r["state"] == "reverted" for r in rows),
        "detection_s": {"median": statistics.median(detections), "max": max(detections),
                        "min": min(detections)} if detections else None,
        "restore_s": {"median": statistics.median(restores), "max": max(restores)}
        if restores else None,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
