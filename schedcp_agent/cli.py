"""``schedcp-agent``: the sched-agent's command line.

    schedcp-agent optimize --goal latency|throughput|makespan|fairness
        [--pid P ... | --cgroup C | --match REGEX | -- CMD ...]
        [--backend offline|claude] [--track auto|T1|T2] [--max-programs N]
        [--budget-usd X] [--bus ADDRESS]
        [--revert-at-end] [--json]
    schedcp-agent watch [--pid P | --cgroup C | --match REGEX] [--min-interval S] ...

Exit status: 0 the goal was met (or watch ended), 1 not met / stopped by the
budget / no candidate, 2 usage, 3 schedcpd not reachable, 4 not authorized.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from schedcp_agent.agent import Agent, Options
from schedcp_agent.client import DaemonError
from schedcp_agent.execute import NotAuthorized, not_authorized
from schedcp_agent.observe import GOALS
from schedcp_agent.report import render
from schedcp_agent.targets import Scope
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
    p.add_argument("--max-iterations", type=int, default=3)
    p.add_argument("--track", choices=("auto", "T1", "T2"), default="auto",
                   help="T1: retune the targets; T2: synthesize a sched_ext program only; "
                        "auto: T2 first when the host offers sched_ext (default)")
    p.add_argument("--max-programs", type=int, default=4,
                   help="programs the model may submit in one run (claude backend)")
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
    return p


def options(args: argparse.Namespace) -> Options:
    """Options from parsed arguments."""
    cmd = [c for c in getattr(args, "cmd", []) or []]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    return Options(
        scope=Scope(pids=list(args.pid), cgroup=args.cgroup, match=args.match),
        goal=args.goal, command=cmd or None, bus=args.bus, backend=args.backend,
        revert_at_end=args.revert_at_end, observe_seconds=args.observe_seconds,
        max_iterations=args.max_iterations, budget_usd=args.budget_usd,
        budget_tokens=args.budget_tokens, budget_seconds=args.budget_seconds,
        model=args.model, base_url=args.base_url, prices=args.prices,
        transcript_dir=args.transcript_dir, track=args.track,
        max_programs=args.max_programs)


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
    opts = options(args)
    if not (opts.scope.pids or opts.scope.cgroup or opts.scope.match or opts.command):
        print("schedcp-agent: give the targets: --pid, --cgroup, --match or -- CMD",
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
    except DaemonError as err:
        if err.short == "AccessDenied":
            print(f"schedcp-agent: not authorized: {not_authorized(err)}", file=sys.stderr)
            return EXIT_DENIED
        print(f"schedcp-agent: schedcpd error: {err}", file=sys.stderr)
        return EXIT_NOT_MET
    except (OSError, EOFError) as err:
        print(f"schedcp-agent: cannot reach schedcpd on {opts.bus}: {err}", file=sys.stderr)
        return EXIT_NO_DAEMON
    print(json.dumps(report, indent=1, default=str) if args.json else render(report))
    return EXIT_OK if report.get("status") == "goal met" else EXIT_NOT_MET


if __name__ == "__main__":
    sys.exit(main())
