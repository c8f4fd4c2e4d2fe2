"""``schedcp-bench``: the reproducible benchmark for agentic scheduling (docs/benchmark.md).

    schedcp-bench list
    schedcp-bench run --suite quick|full [--workloads a,b] [--arms default,agent,policy:NAME]
                      [--reps N] [--window S] [--seed N] [--out DIR] [--heldout FILE]
                      [--config FILE] [--bus auto|system|private|ADDRESS] [--track T1|T2]
    schedcp-bench report DIR

Exit status: 0 done (every workload ran or was skipped with a reason), 1 a
workload failed, 2 usage or configuration error, 3 no daemon, 130 interrupted
(SIGINT/SIGTERM: the current workload is stopped and rolled back first).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schedcp_bench import environment, report
from schedcp_bench.arms import AgentSettings
from schedcp_bench.heldout import HeldoutError
from schedcp_bench.progress import ProgressBar
from schedcp_bench.quiet import QuietPolicy
from schedcp_bench.runner import ALL_POLICIES, RunOptions, run_all
from schedcp_bench.score import ConfigError, load_config
from schedcp_bench.services import BENCH_DAEMON_CONFIG, open_daemon
from schedcp_bench.workload import Workload

_LOGGER = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
TRACKS = ("T1", "T2", "T3")


@dataclass(frozen=True)
class Suite:
    """Defaults of a suite (flags override them)."""

    quick_only: bool
    arms: tuple[str, ...]
    reps: int
    window: float
    agent_observe: float
    agent_iterations: int
    quiet_wait: float
    max_reruns: int
    quiet_budget: float


SUITES = {
    "quick": Suite(True, ("default", "agent"), 3, 2.5, 3.0, 2, 5.0, 1, 30.0),
    "full": Suite(False, ("default", ALL_POLICIES, "agent"), 5, 5.0, 5.0, 3, 30.0, 2, 900.0),
}


def registry() -> dict[str, type[Workload]]:
    """The shipped workloads (empty when the workloads package has none yet)."""
    try:
        mod = importlib.import_module("schedcp_bench.workloads")
    except ImportError as err:
        _LOGGER.warning("workloads unavailable: %s", err)
        return {}
    found: dict[str, type[Workload]] = getattr(mod, "WORKLOADS", {})
    return dict(found)


T3_ARMS = ("default", "policy:io-protect-reads", "policy:io-batch-copy", "policy:database",
           "agent")
"""The T3 track's arms without --arms: kernel defaults, the built-in io and
multi-subsystem policies, the agent's pick."""


def track_unavailable(track: str) -> str | None:
    """Why ``track`` cannot run here, or None.

    T2 (sched_ext code, in the guest host: a micro-VM with a sched_ext
    kernel) needs what ``plugins.scheduler.microvm.available()`` checks.
    T3 (io and multi-subsystem policies on fio workloads) needs fio, losetup
    and root (each session makes a loop device of its own).
    """
    if track == "T1":
        return None
    if track == "T2":
        try:
            from plugins.scheduler.microvm import available
        except ImportError as err:
            return f"not available: the sched_ext micro-VM cannot be imported ({err})"
        why = available()
        return f"not available: {why}" if why else None
    if track == "T3":
        missing = [c for c in ("fio", "losetup") if shutil.which(c) is None]
        if missing:
            return f"not available: missing {', '.join(missing)} (requirements-apt.txt)"
        if os.geteuid() != 0:
            return "not available: needs root (each T3 session makes a loop device)"
        return None
    return f"unknown track {track!r}"


def cmd_list(args: argparse.Namespace) -> int:
    """Print the workloads with their track, suite and availability."""
    reg = registry()
    if not reg:
        print("no workloads registered yet (schedcp_bench.workloads.WORKLOADS is empty)")
    rows = []
    for name, cls in reg.items():
        wl = cls()
        why = wl.unavailable()
        rows.append((name, wl.track, "quick" if wl.quick else "full", wl.goal,
                     "ok" if why is None else why, wl.description))
    width = max([len(r[0]) for r in rows] + [8])
    print(f"{'workload':{width}}  track  suite  goal        available")
    for r in rows:
        print(f"{r[0]:{width}}  {r[1]:5}  {r[2]:5}  {r[3]:10}  {r[4]}")
        if args.verbose:
            print(f"{'':{width}}  {r[5]}")
    for track in TRACKS:
        why = track_unavailable(track)
        print(f"track {track}: {'available' if why is None else why}")
    return EXIT_OK


def select_workloads(args: argparse.Namespace, suite: Suite) -> list[Workload]:
    """The workloads this run covers, in registry (or held-out file) order."""
    if args.heldout:
        from schedcp_bench import heldout

        chosen = heldout.load(args.heldout)
    else:
        chosen = [cls() for cls in registry().values()]
        chosen = [w for w in chosen if w.track == args.track]
        if suite.quick_only and not args.workloads:
            chosen = [w for w in chosen if w.quick]
    if args.workloads:
        wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
        known = {w.name: w for w in (chosen if args.heldout else
                                     [cls() for cls in registry().values()])}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ValueError(f"unknown workload(s) {', '.join(unknown)} "
                             f"(known: {', '.join(known) or 'none'})")
        chosen = [known[w] for w in wanted]
    return chosen


def _options(args: argparse.Namespace, suite: Suite) -> RunOptions:
    cfg = load_config(args.config)
    default_arms = T3_ARMS if getattr(args, "track", "T1") == "T3" else suite.arms
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else list(default_arms)
    if "default" not in arms and cfg.baseline == "default":
        arms.insert(0, "default")
    if args.agent_backend == "claude" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise ValueError("--agent-backend claude needs ANTHROPIC_API_KEY in the environment")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return RunOptions(
        arms=arms, reps=args.reps or suite.reps, window=args.window or suite.window,
        seed=args.seed, out=Path(args.out or f"schedcp-bench-{args.suite}-{stamp}").resolve(),
        quiet=QuietPolicy(max_foreign_cpus=args.max_foreign,
                          max_wait_seconds=(args.quiet_wait if args.quiet_wait is not None
                                            else suite.quiet_wait),
                          max_reruns=(args.max_reruns if args.max_reruns is not None
                                      else suite.max_reruns),
                          budget_seconds=(args.quiet_budget if args.quiet_budget is not None
                                          else suite.quiet_budget)),
        agent=AgentSettings(backend=args.agent_backend,
                            observe_seconds=args.agent_observe or suite.agent_observe,
                            max_iterations=args.agent_iterations or suite.agent_iterations,
                            budget={k: v for k, v in cfg.budget.items()
                                    if k in ("usd", "tokens")}),
        config=cfg, cache=Path(args.cache))


async def _run(workloads: list[Workload], opts: RunOptions, bus: str, bar: ProgressBar,
               daemon_config: str) -> tuple[list[dict[str, Any]], dict[str, Any], list[str],
                                            dict[str, Any]]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:  # stop cleanly: the current workload's finally rolls back
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    with open_daemon(bus, daemon_config) as daemon:
        info = {"kind": daemon.kind,
                "address": daemon.address if daemon.kind != "private" else "private"}
        results, scores, arms = await run_all(workloads, opts, daemon, bar)
    return results, scores, arms, info


def cmd_run(args: argparse.Namespace) -> int:
    """Run a suite and write the results directory."""
    why = track_unavailable(args.track)
    if why:
        print(f"schedcp-bench: track {args.track}: {why}", file=sys.stderr)
        return EXIT_USAGE
    suite = SUITES[args.suite]
    if args.track == "T2":
        return cmd_run_t2(args, suite)
    try:
        opts = _options(args, suite)
        workloads = select_workloads(args, suite)
    except (ValueError, ConfigError, HeldoutError) as err:
        print(f"schedcp-bench: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not workloads:
        print("schedcp-bench: no workloads to run (none registered for this suite/track)",
              file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("schedcp-bench: warning: not root; the private daemon cannot raise priorities",
              file=sys.stderr)
    try:
        daemon_config = (args.daemon_config.read_text() if args.daemon_config
                         else BENCH_DAEMON_CONFIG)
    except OSError as err:
        print(f"schedcp-bench: --daemon-config: {err}", file=sys.stderr)
        return EXIT_USAGE
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = environment.capture()
    bar = ProgressBar(enabled=not args.no_progress)
    try:
        results, scores, arms, daemon = asyncio.run(
            _run(workloads, opts, args.bus, bar, daemon_config))
    except (OSError, RuntimeError) as err:
        bar.close()
        print(f"schedcp-bench: cannot use a schedcpd ({args.bus}): {err}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except ValueError as err:  # an unknown policy arm
        bar.close()
        print(f"schedcp-bench: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, asyncio.CancelledError):
        bar.close()
        print("schedcp-bench: interrupted; the session was stopped and its deployments "
              "rolled back", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    out = report.write({
        "schema": 1, "tool": "schedcp-bench", "suite": args.suite, "track": args.track,
        "arms": arms, "heldout": str(args.heldout) if args.heldout else None,
        "options": {"reps": opts.reps, "window": opts.window, "seed": opts.seed,
                    "quiet": vars(opts.quiet), "agent": vars(opts.agent),
                    "workloads": [w.name for w in workloads]},
        "config": opts.config.as_dict(), "env": env, "daemon": daemon,
        "seconds": round(time.monotonic() - started, 1),
        "workloads": results, "scores": scores,
    }, opts.out)
    print(summary_text(out, opts.out))
    return EXIT_FAILED if any(w["status"] == "error" for w in results) else EXIT_OK


def cmd_run_t2(args: argparse.Namespace, suite: Suite) -> int:
    """The T2 track: verify here, measure in one boot of the sched_ext guest host."""
    from schedcp_bench import t2

    names = ([w.strip() for w in args.workloads.split(",") if w.strip()] if args.workloads
             else list(t2.GUEST_WORKLOADS))
    unknown = [n for n in names if n not in t2.GUEST_WORKLOADS]
    if unknown:
        print(f"schedcp-bench: T2 workload(s) {', '.join(unknown)} unknown (T2 runs "
              f"{', '.join(t2.GUEST_WORKLOADS)} in the guest)", file=sys.stderr)
        return EXIT_USAGE
    if not args.arms:
        args.arms = ",".join(t2.DEFAULT_ARMS)
    if args.agent_backend != "offline" and "agent" in args.arms.split(","):
        print("schedcp-bench: the T2 agent arm is the offline planner's derived program "
              "(--agent-backend claude is not wired into T2)", file=sys.stderr)
        return EXIT_USAGE
    if args.reps is None:
        args.reps = 1  # every deployment costs a verification (a token is used once)
    try:
        opts = _options(args, suite)
    except (ValueError, ConfigError) as err:
        print(f"schedcp-bench: {err}", file=sys.stderr)
        return EXIT_USAGE
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = environment.capture()
    try:
        part = t2.run(opts, names, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except t2.T2Error as err:
        print(f"schedcp-bench: track T2: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("schedcp-bench: interrupted (no qemu outlives its caller)", file=sys.stderr)
        return EXIT_INTERRUPTED
    out = report.write({
        "schema": 1, "tool": "schedcp-bench", "suite": args.suite, "track": "T2",
        "arms": part["arms"], "heldout": None,
        "options": {"reps": opts.reps, "window": None, "seed": opts.seed,
                    "workloads": names, "units_per_window": {
                        n: t2.GUEST_WORKLOADS[n].units for n in names}},
        "config": opts.config.as_dict(), "env": env, "daemon": {"kind": "guest host"},
        "guest": part["guest"], "emulated": part["emulated"],
        "seconds": round(time.monotonic() - started, 1),
        "workloads": part["workloads"], "scores": part["scores"],
    }, opts.out)
    print(summary_text(out, opts.out))
    return EXIT_FAILED if any(w["status"] == "error" for w in out["workloads"]) else EXIT_OK


def summary_text(results: dict[str, Any], out: Path) -> str:
    """A few lines for the terminal after a run."""
    lines = [f"schedcp-bench: {len(results['workloads'])} workloads in "
             f"{results['seconds']:.0f} s"]
    for wl in results["workloads"]:
        if wl["status"] != "ok":
            lines.append(f"  {wl['name']}: {wl['status']}: {wl['reason']}")
            continue
        parts = []
        for arm, sc in wl.get("scores", {}).items():
            alphas = sum(t["alpha"] for t in sc["terms"].values() if t["I"] is not None)
            mean = sc["weighted_sum"] / alphas if alphas else float("nan")
            parts.append(f"{arm} {mean:.2f}{'' if sc['hard_slos_met'] else ' (SLO missed)'}")
        lines.append(f"  {wl['name']}: mean I {', '.join(parts)}")
    for arm, s in results.get("scores", {}).items():
        na = s.get("not_applicable", 0)
        lines.append(f"  Score {arm}: {s['score']:.3f} (overuse {s['budget_overuse']:.3f}"
                     + (f"; not applicable on {na} workloads" if na else "") + ")")
    lines.append(f"results: {out / report.RESULTS_MD}, {out / report.RESULTS_JSON}; plots: "
                 f"{', '.join(results.get('plots', [])) or 'none'}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render results.md and the plots from results.json."""
    try:
        results = report.load(args.dir)
    except (OSError, ValueError) as err:
        print(f"schedcp-bench: {err}", file=sys.stderr)
        return EXIT_USAGE
    report.write(results, Path(args.dir))
    print(f"wrote {Path(args.dir) / report.RESULTS_MD} and {len(results['plots'])} plots")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    """The argument parser (list, run, report)."""
    p = argparse.ArgumentParser(prog="schedcp-bench", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="workloads, tracks and availability")
    r = sub.add_parser("run", help="run a suite and write a results directory")
    r.add_argument("--suite", choices=sorted(SUITES), default="quick")
    r.add_argument("--workloads", help="comma-separated workload names (default: the suite's)")
    r.add_argument("--arms", help="comma-separated: default, agent, policy:NAME, policy:* "
                                  "(default: the suite's)")
    r.add_argument("--reps", type=int, help="repetitions (windows per arm)")
    r.add_argument("--window", type=float, help="seconds per window")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--out", help="results directory (default ./schedcp-bench-SUITE-DATE)")
    r.add_argument("--heldout", type=Path, help="run the workloads of this TOML file instead")
    r.add_argument("--config", type=Path, help="scoring configuration (weights, lambda, budget)")
    r.add_argument("--bus", default="auto",
                   help="auto (system if schedcpd runs there, else private), system, private "
                        "or a D-Bus address")
    r.add_argument("--daemon-config", type=Path,
                   help="schedcpd.toml for the private daemon (default: short probation)")
    r.add_argument("--track", choices=TRACKS, default="T1")
    r.add_argument("--agent-backend", choices=("offline", "claude"), default="offline")
    r.add_argument("--agent-observe", type=float, help="seconds the agent observes")
    r.add_argument("--agent-iterations", type=int, help="candidates the agent may try")
    r.add_argument("--max-foreign", type=float, default=0.3,
                   help="CPUs of foreign load above which a window is noisy")
    r.add_argument("--quiet-wait", type=float,
                   help="longest wait for a quiet host before a window (s; quick 5, full 30)")
    r.add_argument("--max-reruns", type=int,
                   help="reruns of a noisy window (quick 1, full 2)")
    r.add_argument("--quiet-budget", type=float,
                   help="seconds the whole run may spend waiting for quiet and rerunning "
                        "noisy windows (quick 60, full 900)")
    r.add_argument("--cache", default="/var/tmp/schedcp-bench-cache",
                   help="where workload builds are cached")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep = sub.add_parser("report", help="re-render results.md and plots from results.json")
    rep.add_argument("dir", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "list":
        return cmd_list(args)
    if args.command == "run":
        if args.reps is not None and args.reps < 1:
            print("schedcp-bench: --reps must be >= 1", file=sys.stderr)
            return EXIT_USAGE
        return cmd_run(args)
    return cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
