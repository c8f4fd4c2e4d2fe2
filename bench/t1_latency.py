#!/usr/bin/env python3
"""T1 latency benchmark: a periodic latency probe beside a CPU hog, default vs policy.

The probe (C, compiled at run time with ``cc``) runs 2 threads; each wakes on
an absolute 2 ms timer (``clock_nanosleep(TIMER_ABSTIME)``, timer slack
1 ns), burns 200 us of its own CPU time, and records its wake-up latency
(wake time - timer expiry) and response time (work done - timer expiry).
The hog (C) runs 2 spinning threads and reports iterations.  Both run
together; each repetition runs once with the default scheduler settings and
once with the ``latency-protect`` policy applied, alternating, so drift on a
shared machine hits both sides.

The policy is applied the way an agent applies it: through the running
daemon's D-Bus API — SubmitPolicy, VerifyPolicy for a token, Deploy(token),
wait until active (canary, widen) — and rolled back after the run.  The hog
starts first (a batch job already running), the deployment happens in the
next SETTLE_SECONDS (the other modes just wait as long), then the probe
runs; the hog rate covers the whole time in every mode.

Usage: bench/t1_latency.py [--reps 5] [--duration 5] [--json out.json] [--alone]
                           [--wait-quiet 120]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The probe and the hog are shared with schedcp-bench's t1-probe workload.
NATIVE = REPO / "schedcp_bench" / "native"
PROBE_C = (NATIVE / "t1probe.c").read_text()
HOG_C = (NATIVE / "t1hog.c").read_text()


def build(cache: Path) -> tuple[Path, Path]:
    """Compile the probe and the hog (cached by source hash); return their paths."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for name, source in (("t1_probe", PROBE_C), ("t1_hog", HOG_C)):
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        binary = cache / digest / name
        if not binary.exists():
            binary.parent.mkdir(parents=True, exist_ok=True)
            src = binary.with_suffix(".c")
            src.write_text(source)
            subprocess.run(["cc", "-O2", "-pthread", "-o", str(binary), str(src)], check=True)
        out.append(binary)
    return out[0], out[1]


# -- the "apply" step: through the running daemon, with a verifier token ------------------

DAEMON_CONFIG = """[metrics]
enabled = false
[verifier]
dynamic_seconds = 1.0
[deployer]
baseline_seconds = 0.5
canary_seconds = 0.5
full_seconds = 0.5
backoff_seconds = 1
"""


class DaemonApplier:
    """Applies the built-in latency-protect policy through schedcpd's D-Bus API.

    The same path an agent takes: SubmitPolicy, VerifyPolicy (a token),
    Deploy(token), wait for the deployment to be active; Rollback after the
    run.  Without ``address`` it starts a private system-like bus and a
    schedcpd with short deployment windows.
    """

    def __init__(self, address: str | None = None) -> None:
        from contextlib import ExitStack

        from tests.harness import PrivateBus, SchedcpdProcess

        self._stack = ExitStack()
        if address is None:
            bus = self._stack.enter_context(PrivateBus())
            self._stack.enter_context(SchedcpdProcess(bus.address, DAEMON_CONFIG))
            address = bus.address
        self.address = address
        self.policy = tomllib.loads((REPO / "policies" / "latency-protect.toml").read_text())

    def call(self, member: str, signature: str = "", *body: Any) -> Any:
        """One Manager call as root; raise on an error reply."""
        from tests.harness import calls_as

        result = calls_as(0, self.address, [[member, signature, list(body)]])[0]
        if "ok" not in result:
            raise RuntimeError(f"{member}: {result}")
        return result["ok"]

    def token_for(self, probe_pid: int, hog_pid: int, rep: int) -> str:
        """latency-protect with its selectors bound to this run's pids, verified."""
        meta = self.policy["policy"]
        groups = [{"name": group["name"], "match": {"pid": [pid]}, "task": group["task"]}
                  for group, pid in zip(self.policy["group"], (probe_pid, hog_pid), strict=True)]
        doc = {"policy": {"name": f"{meta['name']}-bench", "description": meta["description"]},
               "group": groups}
        policy_id = self.call("SubmitPolicy", "s", tomli_w.dumps(doc))
        token, report = self.call("VerifyPolicy", "s", policy_id)
        if not token:
            raise RuntimeError(f"verification failed: {report}")
        return str(token)

    def deploy(self, token: str) -> str:
        """Deploy and wait until the deployment is active."""
        dep = self.call("Deploy", "s", token)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = json.loads(self.call("GetDeployment", "s", dep))
            if info["state"] == "active":
                return str(dep)
            if info["state"] in ("reverted", "failed"):
                raise RuntimeError(f"deployment {dep} {info['state']}: {info['reason']}")
            time.sleep(0.1)
        raise RuntimeError(f"deployment {dep} not active in 60 s")

    def rollback(self, dep: str) -> None:
        """Undo :meth:`deploy` (the daemon restores every journaled value).

        When the run's processes have exited, the daemon has already ended the
        deployment ("every target process exited"): nothing left to do.
        """
        try:
            self.call("Rollback", "s", dep)
        except RuntimeError as err:
            if "is already reverted" not in str(err):
                raise

    def close(self) -> None:
        """Stop the private daemon and bus, if this applier started them."""
        self._stack.close()


# -- one run -------------------------------------------------------------------------------


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))
    return float(values[index])


SETTLE_SECONDS = 4.0
"""Between starting the hog and starting the probe, in every mode: the policy
run deploys in this time (baseline, canary, widen), the others just wait."""


def run_once(
    probe: Path, hog: Path, seconds: float, mode: str, daemon: DaemonApplier, rep: int,
    stagger: bool = True,
) -> dict[str, Any]:
    """Run probe + hog together once; ``mode`` is "default", "policy" or "alone"."""
    hog_seconds = seconds + SETTLE_SECONDS + 0.5
    hog_proc = subprocess.Popen(
        # mode "alone": the same run without hog threads (the machine's floor)
        [str(hog), str(hog_seconds), "0" if mode == "alone" else "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    probe_proc = subprocess.Popen(
        [str(probe), str(seconds), "2000", "200", "2", "1" if stagger else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    handle = None
    busy: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        # Runnable tasks other than ours (2 hog threads, the probe when awake,
        # this sampler): how much foreign load the run shared the CPUs with.
        while not stop.wait(0.05):
            busy.append(max(0, procs_running() - 3))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        token = daemon.token_for(probe_proc.pid, hog_proc.pid, rep) if mode == "policy" else ""
        assert hog_proc.stdin is not None and probe_proc.stdin is not None
        hog_proc.stdin.write(b"go\n")
        hog_proc.stdin.close()
        settle_until = time.monotonic() + SETTLE_SECONDS
        time.sleep(0.25)  # the hog is at full speed before the baseline
        if token:
            handle = daemon.deploy(token)
        if time.monotonic() > settle_until:
            raise RuntimeError("deploying took longer than SETTLE_SECONDS")
        time.sleep(settle_until - time.monotonic())
        probe_proc.stdin.write(b"go\n")
        probe_proc.stdin.close()
        sampler.start()
        assert probe_proc.stdout is not None and hog_proc.stdout is not None
        probe_out = probe_proc.stdout.read()
        hog_out = hog_proc.stdout.read()
        probe_proc.wait(timeout=30)
        hog_proc.wait(timeout=30)
    finally:
        stop.set()
        for proc in (hog_proc, probe_proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if handle is not None:
            daemon.rollback(handle)
    wake: list[int] = []
    resp: list[int] = []
    missed = 0
    for line in probe_out.decode().splitlines():
        if line.startswith("missed"):
            missed += int(line.split()[1])
        else:
            w, r = line.split()
            wake.append(int(w))
            resp.append(int(r))
    wake.sort()
    resp.sort()
    return {
        "mode": mode,
        "rep": rep,
        "samples": len(wake),
        "wake_p50_us": percentile(wake, 50) / 1000,
        "wake_p99_us": percentile(wake, 99) / 1000,
        "wake_p999_us": percentile(wake, 99.9) / 1000,
        "resp_p99_us": percentile(resp, 99) / 1000,
        "missed": missed,
        "hog_iter_per_s": int(hog_out.decode().strip()) / hog_seconds,
        # Other load on a shared machine skews both sides; keep it beside the numbers.
        "load1": float(Path("/proc/loadavg").read_text().split()[0]),
        "foreign_runnable_mean": statistics.fmean(busy) if busy else 0.0,
    }


def procs_running() -> int:
    """Runnable tasks right now (``procs_running`` in /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("procs_running"):
            return int(line.split()[1])
    return 0


def wait_quiet(limit: float, max_running: int = 3) -> float:
    """Wait up to ``limit`` s for 1 s with at most ``max_running`` runnable tasks.

    A shared machine runs other people's bursts; pairs measured inside one
    compare the policy with a few hundred foreign runnable tasks, not with
    the hog.  Returns the seconds waited.
    """
    start = time.monotonic()
    quiet = 0
    while time.monotonic() - start < limit and quiet < 10:
        quiet = quiet + 1 if procs_running() <= max_running else 0
        time.sleep(0.1)
    return time.monotonic() - start


def summarize(runs: list[dict[str, Any]], quiet_below: float | None = None) -> dict[str, Any]:
    """Median of every metric per mode, plus the ratios the goal is stated in.

    With ``quiet_below``, only repetitions whose two runs both shared the
    machine with fewer foreign runnable tasks (mean) than that are counted.
    """
    if quiet_below is not None:
        noisy = {r["rep"] for r in runs if r["foreign_runnable_mean"] >= quiet_below}
        runs = [r for r in runs if r["rep"] not in noisy]
        if not {r["mode"] for r in runs} >= {"default", "policy"}:
            return {"pairs": 0}
    out: dict[str, Any] = {"pairs": len({r["rep"] for r in runs})}
    for mode in ("default", "policy", "alone"):
        rows = [r for r in runs if r["mode"] == mode]
        if not rows:
            continue
        out[mode] = {
            key: statistics.median(r[key] for r in rows)
            for key in rows[0]
            if key not in ("mode", "rep", "pairs")
        }
        out[mode]["wake_p99_us_range"] = [
            min(r["wake_p99_us"] for r in rows),
            max(r["wake_p99_us"] for r in rows),
        ]
    d, p = out["default"], out["policy"]
    out["wake_p99_improvement_x"] = d["wake_p99_us"] / max(p["wake_p99_us"], 1e-3)
    out["hog_loss_percent"] = 100 * (1 - p["hog_iter_per_s"] / d["hog_iter_per_s"])
    if "alone" in out:
        # How close the policy gets to the probe running with no hog at all.
        out["policy_p99_over_alone_p99"] = p["wake_p99_us"] / max(out["alone"]["wake_p99_us"], 1e-3)
    return out


def main() -> int:
    """Run the alternating comparison and print a table (and JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--alone", action="store_true", help="also run the probe without the hog (floor)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each pair, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "schedcp-t1")
    parser.add_argument("--bus", help="a running schedcpd's bus address (default: start one)")
    parser.add_argument("--aligned", action="store_true",
                        help="fire both probe threads' timers at the same instant (runs A-C); "
                             "by default thread i is offset by i/2 of a period, so the probe "
                             "measures its neighbours' interference, not its own")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (it changes scheduling of its own processes)", file=sys.stderr)
        return 2
    probe, hog = build(args.cache)
    daemon = DaemonApplier(args.bus)
    runs = []
    try:
        for rep in range(args.reps):
            if args.wait_quiet:
                waited = wait_quiet(args.wait_quiet)
                print(f"rep {rep}: waited {waited:.1f} s for a quiet machine", flush=True)
            modes = ["default", "policy"] + (["alone"] if args.alone else [])
            shift = rep % len(modes)
            order = modes[shift:] + modes[:shift]  # rotate so drift hits every mode
            for mode in order:
                run = run_once(probe, hog, args.duration, mode, daemon, rep, not args.aligned)
                runs.append(run)
                print(
                    f"rep {rep} {mode:8s} wake p50 {run['wake_p50_us']:8.1f} us"
                    f"  p99 {run['wake_p99_us']:8.1f}  p99.9 {run['wake_p999_us']:8.1f}"
                    f"  resp p99 {run['resp_p99_us']:8.1f}  missed {run['missed']:4d}"
                    f"  hog {run['hog_iter_per_s']:10.0f} it/s"
                    f"  foreign runnable {run['foreign_runnable_mean']:.1f}",
                    flush=True,
                )
    finally:
        daemon.close()
    summary = {"all": summarize(runs), "quiet": summarize(runs, quiet_below=1.0)}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
