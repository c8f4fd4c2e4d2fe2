"""Run a measured unit again and again and log one JSON record per run.

    python -m schedcp_bench.driver --log FILE [--parser MODULE:FUNC] [--pause S]
                                   [--max-runs N] -- ARGV...

Each run of ARGV becomes one line ``{"start", "end", "rc", ...}`` in FILE
(``time.monotonic()`` seconds, the clock of :func:`schedcp_bench.workload.now`);
``--parser`` names a function ``(stdout: str, stderr: str) -> dict`` whose
figures are merged into the record (a parser error is logged as ``error``).
The driver is the parent of every run, so a policy bound to its pid covers
the runs too.  SIGTERM/SIGINT stop it after the current run; the runner's
session stop kills the driver's whole process group at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

Parser = Callable[[str, str], dict[str, Any]]


def load_parser(spec: str | None) -> Parser | None:
    """The function ``module:func`` names, or None."""
    if not spec:
        return None
    module, _, func = spec.partition(":")
    if not func:
        raise SystemExit(f"--parser {spec!r}: expected MODULE:FUNCTION")
    parser: Parser = getattr(importlib.import_module(module), func)
    return parser


def run_once(argv: list[str], parser: Parser | None) -> dict[str, Any]:
    """One run of ``argv``: its record."""
    start = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    record: dict[str, Any] = {"start": start, "end": time.monotonic(), "rc": out.returncode}
    if out.returncode != 0:
        record["error"] = out.stderr.strip()[-500:]
    elif parser is not None:
        try:
            record.update(parser(out.stdout, out.stderr))
        except Exception as exc:  # the parser's failure is data, not a crash
            record["error"] = f"parser: {type(exc).__name__}: {exc}"
    return record


def main(argv: list[str] | None = None) -> int:
    """Loop the command until signalled (or ``--max-runs``)."""
    ap = argparse.ArgumentParser(prog="schedcp_bench.driver")
    ap.add_argument("--log", required=True)
    ap.add_argument("--parser")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    ap.add_argument("--max-runs", type=int, default=0, help="0: until signalled")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command to run")
    parser = load_parser(args.parser)
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True  # the current run finishes (Session.stop kills the whole group)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runs = 0
    with open(args.log, "a", buffering=1) as log:
        while not stop and (args.max_runs == 0 or runs < args.max_runs):
            record = run_once(command, parser)
            runs += 1
            if not stop:
                log.write(json.dumps(record) + "\n")
            if args.pause and not stop:
                time.sleep(args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
