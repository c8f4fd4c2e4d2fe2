"""The guest half of ``./scripts/demo --t2``: runs inside the sched_ext guest host.

    python3 /run/job/demo_t2_guest.py REPS

Everything goes through ``schedcpctl`` on the guest's system bus, as an
operator would type it: submit the policy, deploy the token the host's
verifier signed (``deploy --wait``), roll back.  hackbench runs ``REPS``
times under the kernel's EEVDF, then under the deployed sched_ext
scheduler.  Prints progress lines and one ``RESULT {json}`` line at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

JOB = Path("/run/job")
SCX = Path("/sys/kernel/sched_ext")
HACKBENCH = ["hackbench", "-g", "4", "-l", "200", "-s", "100"]


def ctl(*args: str) -> Any:
    """schedcpctl --json on the system bus; its parsed output."""
    out = subprocess.run(["schedcpctl", "--bus", "system", "--json", "-q", *args],
                         capture_output=True, text=True, timeout=300)
    print(f"$ schedcpctl {' '.join(a if len(a) < 40 else a[:20] + '...' for a in args)}"
          f"  (exit {out.returncode})", flush=True)
    if out.returncode != 0:
        raise RuntimeError(f"schedcpctl {args[0]}: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def hackbench(reps: int, label: str) -> list[float]:
    """Wall seconds of each hackbench run."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(HACKBENCH, check=True, capture_output=True, timeout=300)
        times.append(round(time.perf_counter() - start, 3))
        print(f"hackbench under {label}: {times[-1]:.2f} s", flush=True)
    return times


def state() -> str:
    """sched_ext's state (enabled, disabled, ...)."""
    return (SCX / "state").read_text().strip()


def in_ext() -> int:
    """Threads whose policy is SCHED_EXT (7)."""
    count = 0
    for task in Path("/proc").glob("[0-9]*/task/*"):
        try:
            lines = (task / "sched").read_text().splitlines()
        except OSError:
            continue
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        count += fields.get("policy") == "7"
    return count


def main() -> int:
    """EEVDF runs, deploy, sched_ext runs, rollback; the RESULT line."""
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    result: dict[str, Any] = {"state_before": state()}
    result["eevdf_s"] = hackbench(reps, "EEVDF")
    policy = ctl("policy", "submit", str(JOB / "policy.toml"))
    result["policy"] = policy
    deployed = ctl("deploy", "--wait", "--timeout", "180", str(JOB / "policy.token"))
    dep = deployed["id"]
    info = ctl("deployment", "show", str(dep))
    result.update(deployment=dep, deployed_state=info["state"], ops=(SCX / "root" / "ops")
                  .read_text().strip() if (SCX / "root" / "ops").exists() else "",
                  state_during=state())
    result["scx_s"] = hackbench(reps, f"sched_ext ({result['ops']})")
    ctl("rollback", str(dep))
    result.update(state_after=state(), in_ext_after=in_ext(),
                  final=ctl("deployment", "show", str(dep))["state"])
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
