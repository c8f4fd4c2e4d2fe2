#!/usr/bin/env python3
"""Tuned vs untuned built-in: ``schedcp-agent tune`` on the T1 latency workload, then A/B.

Workload: bench/t1_latency.py's probe (2 threads waking on a 2 ms timer,
200 us of work each) beside its hog (2 spinning threads).  Policy: the
built-in ``latency-protect`` (latency group: the probe; batch group: the
hog), whose ``[parameters]`` are batch_nice, latency_timer_slack_ns and
latency_slice_us.

1. **Tune**: with the probe and the hog running, the tuner
   (:class:`schedcp_agent.tune.Tuner`, the same code as ``schedcp-agent
   tune``) searches the ranges for ``--goal`` (default ``wait-p90:latency``:
   the p90 run-queue wait per run of the probe over each trial's probation
   window, as schedcpd measured it).  Every trial is a real deployment
   through a private schedcpd (token, canary, breaker).
2. **Compare**: fresh probe + hog runs, alternating (order rotated per
   pair) the built-in at its defaults ("untuned") and the best point
   ("tuned"), each deployed through the daemon the same way
   (bench/t1_latency.py's ``run_once``); before each pair it waits for a
   quiet machine (``--wait-quiet``), and the summary is given for all pairs
   and for the quiet ones (foreign runnable mean < 1 in both runs).
   The figure compared is the probe's wake-up p99 (and the hog's rate).
3. **Restore check**: no deployment is live at the end, every trial's
   deployment ended (reverted or rolled back), breaker trips are counted.

Usage (root): bench/tune.py [--trials 8] [--seconds 400] [--reps 4] [--duration 5]
                            [--wait-quiet 30] [--out DIR] [--seed N] [--range-verification]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.t1_latency import DaemonApplier, build, run_once, wait_quiet  # noqa: E402
from schedcp_agent.document import set_field  # noqa: E402
from schedcp_agent.tune import TuneOptions, Tuner, write_plot  # noqa: E402
from schedcp_bench.services import PrivateBus, SchedcpdProcess  # noqa: E402

# Longer windows than t1_latency's (0.5 s): each trial's figure is the median
# over the probation window (canary + full), sampled by the breaker.
TUNE_CONFIG = """[metrics]
enabled = false
[verifier]
dynamic_seconds = 1.0
[deployer]
baseline_seconds = 2.0
canary_seconds = 2.0
full_seconds = 4.0
backoff_seconds = 1
"""


def tune(address: str, probe: Path, hog: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the tuner against a live probe + hog; returns its report."""
    long = str(args.seconds + 120)
    hog_proc = subprocess.Popen([str(hog), long, "2"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL)
    probe_proc = subprocess.Popen([str(probe), long, "2000", "200", "2", "1"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        for proc in (hog_proc, probe_proc):
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        time.sleep(1.0)
        opts = TuneOptions(policy="latency-protect", goal=args.goal, bus=address,
                           trials=args.trials, seconds=args.seconds, seed=args.seed,
                           bindings={"latency": [probe_proc.pid], "batch": [hog_proc.pid]})
        return asyncio.run(Tuner(opts, lambda line: print("tune:", line, flush=True)).run())
    finally:
        for proc in (hog_proc, probe_proc):
            proc.kill()
            proc.wait()


def doc_with(base: dict[str, Any], point: dict[str, float | int]) -> dict[str, Any]:
    """latency-protect's document with ``point`` written into its parameter fields."""
    doc = copy.deepcopy(base)
    for name, value in point.items():
        set_field(doc, doc["parameters"][name]["field"], value)
    return doc


def summarize(runs: list[dict[str, Any]], quiet_below: float | None) -> dict[str, Any]:
    """Medians per mode and the untuned/tuned ratio of the probe's wake p99."""
    if quiet_below is not None:
        noisy = {r["rep"] for r in runs if r["foreign_runnable_mean"] >= quiet_below}
        runs = [r for r in runs if r["rep"] not in noisy]
    out: dict[str, Any] = {"pairs": len({r["rep"] for r in runs})}
    for mode in ("untuned", "tuned"):
        rows = [r for r in runs if r["mode"] == mode]
        if not rows:
            return out
        out[mode] = {k: statistics.median(r[k] for r in rows)
                     for k in ("wake_p50_us", "wake_p99_us", "wake_p999_us", "resp_p99_us",
                               "hog_iter_per_s", "foreign_runnable_mean")}
    u, t = out["untuned"], out["tuned"]
    out["wake_p99_untuned_over_tuned"] = round(u["wake_p99_us"] / max(t["wake_p99_us"], 1e-3), 3)
    out["wake_p99_better_percent"] = round(100 * (1 - t["wake_p99_us"] / u["wake_p99_us"]), 1)
    out["hog_change_percent"] = round(100 * (t["hog_iter_per_s"] / u["hog_iter_per_s"] - 1), 1)
    return out


def restore_check(daemon: DaemonApplier, report: dict[str, Any]) -> dict[str, Any]:
    """Nothing live; every trial deployment ended; breaker trips counted."""
    deps = json.loads(daemon.call("ListDeployments"))
    live = [d["id"] for d in deps if d["state"] in ("pending", "canary", "active")]
    trial_deps = {t["deployment"] for t in report["trials"] if t["deployment"]}
    ended = {d["id"]: d["state"] for d in deps if d["id"] in trial_deps}
    return {"live_deployments": live, "trial_deployments": len(trial_deps),
            "trial_states": sorted(set(ended.values())),
            "breaker_trips": sum(t["state"] == "reverted" for t in report["trials"]),
            "all_ended": all(s in ("reverted", "failed") for s in ended.values())
            and len(ended) == len(trial_deps)}


def main() -> int:
    """Tune, compare, check; print the summary (and write it with --out)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seconds", type=float, default=400.0)
    p.add_argument("--goal", default="wait-p90:latency")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--wait-quiet", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "schedcp-tune")
    p.add_argument("--range-verification", action="store_true",
                   help="the tuning daemon verifies the parameter box once (corners and "
                        "centre) and covers every trial's dynamic stage with it")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "schedcp-t1")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (it changes scheduling of its own processes)", file=sys.stderr)
        return 2
    probe, hog = build(args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    config = TUNE_CONFIG.replace("[verifier]\n", "[verifier]\nrange_verification = true\n") \
        if args.range_verification else TUNE_CONFIG
    with PrivateBus() as bus, SchedcpdProcess(bus.address, config):
        t0 = time.monotonic()
        report = tune(bus.address, probe, hog, args)
        tune_seconds = time.monotonic() - t0
        check = restore_check(DaemonApplier(bus.address), report)
    (args.out / "tune.json").write_text(json.dumps(report, indent=1, default=str))
    write_plot(report, args.out / "trials.png")
    # The comparison deploys within t1_latency's 4 s settle time: its own daemon
    # with t1_latency's short windows (the tuning daemon has stopped).
    daemon = DaemonApplier()
    runs: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    try:
        base = daemon.policy
        best = (report.get("best") or {}).get("point") or report["default_point"]
        docs = {"untuned": doc_with(base, report["default_point"]), "tuned": doc_with(base, best)}
        for rep in range(args.reps):
            if args.wait_quiet:
                print(f"rep {rep}: waited {wait_quiet(args.wait_quiet):.1f} s for quiet",
                      flush=True)
            order = ["untuned", "tuned"] if rep % 2 == 0 else ["tuned", "untuned"]
            pair = []
            for mode in order:
                daemon.policy = docs[mode]
                try:
                    run = run_once(probe, hog, args.duration, "policy", daemon, rep)
                except RuntimeError as err:  # e.g. deploying outlasted the settle time
                    print(f"rep {rep} {mode}: dropped the pair: {err}", flush=True)
                    dropped.append({"rep": rep, "mode": mode, "error": str(err)})
                    break
                run["mode"] = mode
                pair.append(run)
                print(f"rep {rep} {mode:8s} wake p99 {run['wake_p99_us']:8.1f} us  p50 "
                      f"{run['wake_p50_us']:6.1f}  hog {run['hog_iter_per_s']:10.0f} it/s  "
                      f"foreign runnable {run['foreign_runnable_mean']:.1f}", flush=True)
            if len(pair) == 2:
                runs += pair
        live = [d["id"] for d in json.loads(daemon.call("ListDeployments"))
                if d["state"] in ("pending", "canary", "active")]
        check["live_after_compare"] = live
    finally:
        daemon.close()
    summary = {"tuning": {"seconds": round(tune_seconds, 1), "counts": report["counts"],
                          "range_verification": args.range_verification,
                          "verify_seconds": [t["verify_seconds"] for t in report["trials"]],
                          "seconds_per_trial": report["seconds_per_trial"],
                          "verify_seconds_per_trial": report["verify_seconds_per_trial"],
                          "default_point": report["default_point"], "best": report["best"]},
               "all": summarize(runs, None), "quiet": summarize(runs, 1.0),
               "dropped_pairs": dropped,
               "restore": check}
    print(json.dumps(summary, indent=2, default=str))
    (args.out / "bench.json").write_text(json.dumps({"runs": runs, "summary": summary},
                                                    indent=2, default=str))
    ok = not check["live_deployments"] and not check["live_after_compare"] and check["all_ended"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
