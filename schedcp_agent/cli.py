"""``schedcp-agent``: the sched-agent's command line.

    schedcp-agent optimize --goal latency|throughput|makespan|fairness
        [--pid P ... | --cgroup C | --match REGEX | -- CMD ...]
        [--backend offline|claude] [--track auto|T1|T2] [--max-programs N]
        [--may-act-on neighbours [--neighbours-match REGEX]]
        [--budget-usd X] [--bus ADDRESS]
        [--revert-at-end] [--json]
    schedcp-agent watch [--pid P | --cgroup C | --match REGEX] [--min-interval S] ...
    schedcp-agent tune POLICY|deployed --goal wait:GROUP|wait-p90:GROUP|cpu:GROUP
        [--bind GROUP=PID[,PID...]] [--trials N] [--seconds S] [--out DIR] ...

Exit status: 0 a deployment improved the goal beyond noise, nothing to gain
(or watch ended), 1 no gain / stopped by the budget / no candidate, 2 usage,
3 schedcpd not reachable, 4 not authorized.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from schedcp_agent.agent import Agent, Options
from schedcp_agent.client import DaemonError
from schedcp_agent.execute import NotAuthorized, not_authorized
from schedcp_agent.learn import IMPROVED
from schedcp_agent.observe import GOALS
from schedcp_agent.report import render
from schedcp_agent.targets import Scope
from schedcp_agent.trial import TuneError
from schedcp_agent.watch import Watcher, WatchSettings

EXIT_OK, EXIT_NOT_MET, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_DENIED = 0, 1, 2, 3, 4


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bus", default=os.environ.get("SCHEDCP_BUS", "system"),
                   help="system, session or a D-Bus address (default $SCHEDCP_BUS or system)")
    p.add_argument("--pid", type=int, action="append", default=[],
                   help="target process and its descendants (repeatable)")
    p.add_argument("--cgroup", help="target every process in this cgroup (path as in "
                                    "/proc/PID/cgroup) or below")
    p.add_argument("--match", help="target processes whose command line matches REGEX")
    p.add_argument("--goal", choices=GOALS, help="what to optimise (inferred when omitted)")
    p.add_argument("--backend", choices=("offline", "claude"), default="offline")
    p.add_argument("--budget-usd", type=float, help="stop when the model cost reaches this")
    p.add_argument("--budget-tokens", type=int, help="stop when this many tokens are billed")
    p.add_argument("--budget-seconds", type=float, help="stop planning after this wall time")
    p.add_argument("--model", default=os.environ.get("SCHEDCP_AGENT_MODEL"),
                   help="Claude model (default claude-sonnet-4-5)")
    p.add_argument("--base-url", help="Messages API base URL (default $ANTHROPIC_BASE_URL)")
    p.add_argument("--prices", help="JSON price table (dollars per million tokens)")
    p.add_argument("--transcript-dir", type=Path, help="where model transcripts go")
    p.add_argument("--observe-seconds", type=float, default=5.0)
    p.add_argument("--measure-seconds", type=float, default=3.0,
                   help="how long each deployment runs once active before its gain is "
                        "judged (more samples in the after window: a smaller gain is told "
                        "from noise)")
    p.add_argument("--max-iterations", type=int, default=3)
    p.add_argument("--track", choices=("auto", "T1", "T2"), default="auto",
                   help="T1: retune the targets; T2: synthesize a sched_ext program only; "
                        "auto: T2 first when the host offers sched_ext (default)")
    p.add_argument("--max-programs", type=int, default=4,
                   help="programs the model may submit in one run (claude backend)")
    p.add_argument("--may-act-on", choices=("neighbours",), action="append", default=[],
                   help="neighbours: the agent may deploy on competitors it finds outside "
                        "the scope (default: it only proposes that in the report)")
    p.add_argument("--neighbours-match", metavar="REGEX",
                   help="with --may-act-on neighbours: only competitors whose command line "
                        "matches REGEX")
    p.add_argument("--io-device", action="append", default=[], metavar="NAME",
                   help="a block device (kernel name, e.g. sdb) whose queue settings the agent "
                        "may change for an io policy; they are machine-wide, so without it "
                        "the agent only sets the targets' own I/O priority")
    p.add_argument("--revert-at-end", action="store_true",
                   help="roll back what was deployed when the run ends (and hold it meanwhile)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-v", "--verbose", action="store_true")


def parser() -> argparse.ArgumentParser:
    """The argument parser (two subcommands)."""
    p = argparse.ArgumentParser(prog="schedcp-agent", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("optimize", help="one closed loop on the targets, then a report")
    _common(opt)
    opt.add_argument("cmd", nargs=argparse.REMAINDER,
                     help="-- CMD ...: start CMD and optimise it until it ends")
    w = sub.add_parser("watch", help="react to triggers within the scope")
    _common(w)
    w.add_argument("--poll", type=float, default=5.0)
    w.add_argument("--min-interval", type=float, default=60.0,
                   help="seconds between two actions")
    w.add_argument("--heavy-cpu", type=float, default=0.5,
                   help="cores that make a new process tree a trigger")
    w.add_argument("--psi-threshold", type=float, default=50.0,
                   help="cpu some avg10 (percent) that is a trigger")
    w.add_argument("--max-actions", type=int)
    w.add_argument("--duration", type=float, help="stop watching after this many seconds")
    t = sub.add_parser("tune", help="search a policy's [parameters] ranges, one deployment "
                                    "per trial")
    t.add_argument("policy", help="policy id, name, or 'deployed' (the live deployment's)")
    t.add_argument("--goal", required=True,
                   help="wait:GROUP, wait-p90:GROUP (lower is better) or cpu:GROUP (higher)")
    t.add_argument("--bind", action="append", default=[], metavar="GROUP=PID[,PID]",
                   help="make a group select exactly these pids (repeatable)")
    t.add_argument("--trials", type=int, default=10, help="deployments at most (default 10)")
    t.add_argument("--seconds", type=float, default=600.0, help="wall time budget (default 600)")
    t.add_argument("--seed", type=int, help="sampler seed (reproducible proposals)")
    t.add_argument("--try", dest="try_points", action="append", default=[],
                   metavar="NAME=VALUE[,NAME=VALUE]",
                   help="a point to try right after the default (repeatable)")
    t.add_argument("--absolute", action="store_true",
                   help="score the probation figure itself, not probation/baseline")
    t.add_argument("--no-warm-start", action="store_true",
                   help="ignore earlier runs' measurements in the repository")
    t.add_argument("--deploy-best", action="store_true",
                   help="deploy the best point at the end and leave it active")
    t.add_argument("--out", type=Path, help="write tune.json and trials.png here")
    t.add_argument("--bus", default=os.environ.get("SCHEDCP_BUS", "system"))
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    t.add_argument("-v", "--verbose", action="store_true")
    return p


def _bindings(items: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for item in items:
        group, _, pids = item.partition("=")
        try:
            out.setdefault(group, []).extend(int(p) for p in pids.split(",") if p)
        except ValueError as err:
            raise TuneError(f"--bind {item!r}: expected GROUP=PID[,PID...]") from err
        if not group or not out[group]:
            raise TuneError(f"--bind {item!r}: expected GROUP=PID[,PID...]")
    return out


def _point(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError as err:
            raise TuneError(f"--try {text!r}: expected NAME=VALUE[,NAME=VALUE]") from err
    return out


def tune_main(args: argparse.Namespace) -> int:
    """``schedcp-agent tune``."""
    # optuna (the agent extra) is imported only by the command that needs it.
    from schedcp_agent.tune import TuneOptions, Tuner, write_plot

    say = _progress(args.json)
    try:
        opts = TuneOptions(policy=args.policy, goal=args.goal, bus=args.bus,
                           trials=args.trials, seconds=args.seconds,
                           bindings=_bindings(args.bind), warm_start=not args.no_warm_start,
                           seed=args.seed, out_dir=args.out, deploy_best=args.deploy_best,
                           first_points=[_point(p) for p in args.try_points],
                           relative=not args.absolute)
        report = asyncio.run(Tuner(opts, say).run())
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "tune.json").write_text(json.dumps(report, indent=1, default=str))
            say(f"wrote {args.out / 'tune.json'}")
            try:
                say(f"wrote {write_plot(report, args.out / 'trials.png')}")
            except TuneError as err:  # no matplotlib: the report is written all the same
                say(f"no plot: {err}")
    except TuneError as err:
        print(f"schedcp-agent: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (DaemonError, OSError, EOFError) as err:
        return _daemon_failure(err, args.bus)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(render_tune(report))
    return EXIT_OK if report.get("best") else EXIT_NOT_MET


def render_tune(report: dict[str, Any]) -> str:
    """The tuning report as text."""
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    lines = [f"tuned {report['policy']['name']} for {report['goal']} "
             f"({report['metric']}, {report['direction']}) in {report['seconds']} s: "
             f"{counts or 'no trial'}"]
    for t in report["trials"]:
        value = f"{t['value']:g}" if t["value"] is not None else "-"
        point = " ".join(f"{k}={v:g}" for k, v in t["point"].items())
        lines.append(f"  #{t['number']:<3} {t['state']:<9} {value:>10}  {point}  "
                     f"[{t['policy_id'][:12]}] {t['seconds']:.1f} s (verify "
                     f"{t['verify_seconds']:.1f} s) {t['reason'][:100]}")
    best = report.get("best")
    if best:
        lines.append(f"best: {' '.join(f'{k}={v:g}' for k, v in best['point'].items())} "
                     f"-> {best['value']:g} (default point: "
                     f"{' '.join(f'{k}={v:g}' for k, v in report['default_point'].items())})")
    else:
        lines.append("best: none measured")
    return "\n".join(lines)


def options(args: argparse.Namespace) -> Options:
    """Options from parsed arguments."""
    cmd = [c for c in getattr(args, "cmd", []) or []]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    return Options(
        scope=Scope(pids=list(args.pid), cgroup=args.cgroup, match=args.match),
        goal=args.goal, command=cmd or None, bus=args.bus, backend=args.backend,
        revert_at_end=args.revert_at_end, observe_seconds=args.observe_seconds,
        measure_seconds=args.measure_seconds,
        max_iterations=args.max_iterations, budget_usd=args.budget_usd,
        budget_tokens=args.budget_tokens, budget_seconds=args.budget_seconds,
        model=args.model, base_url=args.base_url, prices=args.prices,
        transcript_dir=args.transcript_dir, track=args.track,
        max_programs=args.max_programs,
        may_act_on_neighbours="neighbours" in args.may_act_on,
        neighbours_match=args.neighbours_match,
        io_devices=list(getattr(args, "io_device", []) or []))


def _progress(json_out: bool) -> Any:
    def say(line: str) -> None:
        print(f"schedcp-agent: {line}", file=sys.stderr if json_out else sys.stdout,
              flush=True)
    return say


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "tune":
        return tune_main(args)
    opts = options(args)
    if not (opts.scope.pids or opts.scope.cgroup or opts.scope.match or opts.command):
        print("schedcp-agent: give the targets: --pid, --cgroup, --match or -- CMD",
              file=sys.stderr)
        return EXIT_USAGE
    if opts.neighbours_match is not None:
        if not opts.may_act_on_neighbours:
            print("schedcp-agent: --neighbours-match needs --may-act-on neighbours",
                  file=sys.stderr)
            return EXIT_USAGE
        try:
            re.compile(opts.neighbours_match)
        except re.error as err:
            print(f"schedcp-agent: --neighbours-match: not a regular expression: {err}",
                  file=sys.stderr)
            return EXIT_USAGE
    say = _progress(args.json)
    try:
        if args.command == "watch":
            settings = WatchSettings(args.poll, args.min_interval, args.heavy_cpu,
                                     args.psi_threshold, args.max_actions, args.duration)
            actions = asyncio.run(Watcher(opts, settings, say).run())
            if args.json:
                print(json.dumps({"actions": actions}, indent=1, default=str))
            return EXIT_OK
        report = asyncio.run(Agent(opts, say).optimize())
    except NotAuthorized as err:
        print(f"schedcp-agent: not authorized: {err}", file=sys.stderr)
        return EXIT_DENIED
    except (DaemonError, OSError, EOFError) as err:
        return _daemon_failure(err, opts.bus)
    print(json.dumps(report, indent=1, default=str) if args.json else render(report))
    return EXIT_OK if succeeded(report) else EXIT_NOT_MET


def succeeded(report: dict[str, Any]) -> bool:
    """Exit 0: a deployment improved the goal, or the agent saw nothing to gain."""
    status = str(report.get("status", ""))
    return status == IMPROVED or status.startswith("nothing to gain")


def _daemon_failure(err: Exception, bus: str) -> int:
    """Say why a call to schedcpd failed; the exit status for it."""
    if isinstance(err, DaemonError):
        if err.short == "AccessDenied":
            print(f"schedcp-agent: not authorized: {not_authorized(err)}", file=sys.stderr)
            return EXIT_DENIED
        print(f"schedcp-agent: schedcpd error: {err}", file=sys.stderr)
        return EXIT_NOT_MET
    print(f"schedcp-agent: cannot reach schedcpd on {bus}: {err}", file=sys.stderr)
    return EXIT_NO_DAEMON


if __name__ == "__main__":
    sys.exit(main())

