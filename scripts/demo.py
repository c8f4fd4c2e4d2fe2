"""The main job: an agent protects a latency-sensitive task, measured, then undone.

1. use the host's schedcpd on the system bus when run as root where systemd
   runs it, otherwise start one on a private system-like bus (as the tests do);
2. start the T1 mixed workload: a latency probe (2 ms periodic waker, 200 us
   of work) beside one CPU hog per CPU;
3. measure the probe's wake-up latency for a few seconds (before);
4. run ``schedcp-agent optimize --goal latency`` with the offline planner:
   it observes, picks a policy from the repository, has it verified, deploys
   it as a canary behind the circuit breaker;
5. measure again (after), print the before/after table and write a plot
   (PNG) of the probe's wake-up latency distribution before and after;
6. roll the deployment back and check every target is restored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.scheduler import sandbox
from schedcp_bench.services import open_daemon
from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH

ROOT = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
WORKER = sandbox.WORKER
MEASURE_SECONDS = 4.0
CONFIG = """[metrics]
enabled = false
[analysis]
rate_hz = 4.0
window_seconds = 5.0
[verifier]
dynamic_seconds = 1.0
[deployer]
baseline_seconds = 1.5
canary_seconds = 2.0
full_seconds = 2.0
"""


def say(text: str) -> None:
    """Print a step of the demo."""
    print(f"\n== {text}", flush=True)


def measure(probe: subprocess.Popen[bytes], reports: Path) -> dict[str, Any]:
    """The probe's wake-up latency over the next MEASURE_SECONDS (from its step log)."""
    return sandbox.measure(reports / f"probe-{probe.pid}", MEASURE_SECONDS)


def rollback(address: str, deployment: str) -> str:
    """Roll ``deployment`` back through the D-Bus API (busctl); its restore summary."""
    where = ["--system"] if address == "system" else [f"--address={address}"]
    out = subprocess.run(["busctl", *where, "--json=short", "call", BUS_NAME, OBJECT_PATH,
                          MANAGER_INTERFACE, "Rollback", "s", deployment],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return f"rollback failed: {out.stderr.strip()}"
    restore = json.loads(json.loads(out.stdout)["data"][0]).get("restore") or {}
    return f"restored: {restore.get('summary')}"


def plot(before: dict[str, float], after: dict[str, float], path: Path) -> Path | str:
    """A bar chart of the probe's wake-up percentiles before and after; its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not written (matplotlib missing: pip install schedcp[bench])"
    keys = [k for k in ("wake_p50_us", "wake_p99_us") if k in before and k in after]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [before[k] for k in keys], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [after[k] for k in keys], 0.4, label="after (agent)")
    ax.set_xticks(list(xs), [k.replace("_us", "") for k in keys])
    ax.set_yscale("log")
    ax.set_ylabel("wake-up latency (us, log)")
    ax.set_title("latency probe beside CPU hogs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> int:
    """Run the demo; exit 0 when every target was restored."""
    reports = Path(tempfile.mkdtemp(prefix="schedcp-demo-"))
    with open_daemon("auto", CONFIG) as daemon:
        bus = daemon
        where = ("the system bus (the host's schedcpd)" if daemon.kind == "system"
                 else f"a private system-like bus (schedcpd pid {daemon.own_pids[-1]})")
        say(f"schedcpd on {where}")
        subprocess.run([str(BIN / "schedcpctl"), "--bus", bus.address, "status"], check=True)

        say("workload: a latency probe (2 ms period, 200 us work) beside "
            f"{os.cpu_count()} CPU hogs")
        procs = [subprocess.Popen([sys.executable, str(WORKER), str(reports / "probe-%d"),
                                   "periodic"])]
        procs += [subprocess.Popen([sys.executable, str(WORKER), str(reports / "hog-%d"), "spin"])
                  for _ in range(os.cpu_count() or 2)]
        probe = procs[0]
        try:
            time.sleep(1.0)
            before = measure(probe, reports)
            say("schedcp-agent optimize --goal latency (offline planner)")
            regex = f"{WORKER.name} {reports}/"
            agent = subprocess.run(
                [str(BIN / "schedcp-agent"), "optimize", "--bus", bus.address, "--goal",
                 "latency", "--match", regex, "--observe-seconds", "3", "--max-iterations", "1",
                 "--json"], capture_output=True, text=True, timeout=300)
            sys.stderr.write(agent.stderr)
            report = json.loads(agent.stdout) if agent.stdout.strip() else {}
            deployment = report.get("kept_deployment")
            attempts = report.get("attempts") or [{}]
            chosen = attempts[-1].get("candidate", {})
            after = measure(probe, reports)

            say("before / after (the probe's wake-up latency, measured here)")
            print(f"{'':14} {'before':>10} {'after':>10}")
            for key in ("wake_p50_us", "wake_p99_us"):
                b, a = before.get(key), after.get(key)
                print(f"{key:14} {b or 0:>10.0f} {a or 0:>10.0f}")
            saw = report.get("saw") or {}
            print(f"the agent saw: {saw.get('text') or saw.get('shape')}")
            print(f"it chose: {chosen.get('base')} ({chosen.get('rung')}): "
                  f"{chosen.get('reasoning')}")
            print(f"deployment {deployment}: {report.get('status')} "
                  f"(agent exit status {agent.returncode})")
            print(f"plot: {plot(before, after, reports / 'before-after.png')}")
        finally:
            if "deployment" in locals() and deployment:
                say(f"roll back {deployment}")
                print(rollback(bus.address, deployment))
            restored = all(os.sched_getscheduler(p.pid) == os.SCHED_OTHER
                           and os.getpriority(os.PRIO_PROCESS, p.pid) == 0 for p in procs)
            for proc in procs:
                proc.kill()
                proc.wait()
    say("every target back to its original scheduling" if restored else "NOT RESTORED")
    return 0 if restored else 1


if __name__ == "__main__":
    if "--t2" in sys.argv[1:]:
        import demo_t2  # the sched_ext story, in the guest host (scripts/ is on sys.path)

        sys.exit(demo_t2.main())
    sys.exit(main())
