"""What the workloads share: native builds, tools under the run directory, log reduction.

Every workload starts its processes so that their command lines contain the
session's run directory (a log path, a config path, or the program itself run
through a symlink in ``RUN_DIR/bin``), which makes ``re.escape(run_dir)`` a
``--match`` regex unique to the session.  The C programs in
``schedcp_bench/native`` are compiled once per source digest into the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import schedcp_bench
from schedcp_bench.workload import Session, Workload

_LOGGER = logging.getLogger(__name__)

NATIVE_DIR = Path(__file__).resolve().parents[1] / "native"
#: the directory holding the ``schedcp_bench`` package the workloads run from
PACKAGE_ROOT = Path(schedcp_bench.__file__).resolve().parents[1]
#: source file (in NATIVE_DIR) -> binary name; binary names are the comms policies match
NATIVE_BINARIES = {
    "t1probe": "t1_probe",
    "t1hog": "t1_hog",
    "msglat": "msglat",
    "spinjob": "spinjob",
    "cachejob": "cachejob",
}
Figures = dict[str, float | None]


def build_native(cache: Path, source: str) -> Path:
    """Compile ``NATIVE_DIR/<source>.c`` with ``cc -O2`` into the cache (once per digest)."""
    src = NATIVE_DIR / f"{source}.c"
    if not src.is_file():
        raise FileNotFoundError(f"no native source {src}")
    text = src.read_bytes()
    digest = hashlib.sha256(text).hexdigest()[:16]
    binary = cache / "native" / digest / NATIVE_BINARIES[source]
    if binary.exists():
        return binary
    if shutil.which("cc") is None:
        raise RuntimeError("cc not found: install gcc (requirements-apt.txt)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f".{binary.name}.{os.getpid()}")
    out = subprocess.run(
        ["cc", "-O2", "-Wall", "-pthread", "-o", str(tmp), str(src)],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"compiling {src} failed:\n{out.stderr.strip()}")
    tmp.replace(binary)  # atomic: parallel prepares never see half a binary
    _LOGGER.info("built %s", binary)
    return binary


def python_env() -> dict[str, str]:
    """The environment for Python processes of a session: this checkout's package first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def python_argv(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def driver_argv(log: Path, argv: Sequence[str], parser: str | None = None,
                pause: float = 0.0) -> list[str]:
    """The generic loop driver (:mod:`schedcp_bench.driver`) running ``argv`` again and again."""
    out = python_argv("schedcp_bench.driver", "--log", str(log))
    if parser:
        out += ["--parser", parser]
    if pause:
        out += ["--pause", f"{pause:g}"]
    return [*out, "--", *argv]


def which(command: str) -> str | None:
    """``command`` on PATH, else in /usr/sbin or /sbin (nginx lives there; PATH may lack it)."""
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


def tool(run_dir: Path, command: str) -> str:
    """A symlink ``RUN_DIR/bin/<command>`` to the command on PATH (its argv[0] names the run).

    The comm stays the command's name, so policies matching it still do.
    """
    found = which(command)
    if found is None:
        raise RuntimeError(f"{command} not found on PATH (see requirements-apt.txt)")
    return link(run_dir, found)


def link(run_dir: Path, target: str | Path) -> str:
    """A symlink ``RUN_DIR/bin/<name>`` to ``target`` (a cached binary), for the command line."""
    target = Path(target)
    path = run_dir / "bin" / target.name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_symlink():
        path.symlink_to(target)
    return str(path)


def run_dir_match(run_dir: Path) -> str:
    """The session's --match regex: its run directory, which every command line contains."""
    return re.escape(str(run_dir))


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_log(path: Path, t0: float, t1: float) -> list[dict[str, Any]]:
    """Records of a JSON-lines log with ``t0 <= start`` and ``end <= t1`` (as Session.records)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if isinstance(rec, dict) and t0 <= rec.get("start", -1.0) \
                and rec.get("end", float("inf")) <= t1:
            out.append(rec)
    return out


def good(records: Iterable[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """Driver records of successful runs that carry every key in ``keys``."""
    return [r for r in records
            if r.get("rc", 0) == 0 and "error" not in r and all(k in r for k in keys)]


def finite(value: float | None) -> float | None:
    """``value`` as a float, or None when missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def median(values: Iterable[float]) -> float | None:
    """The median, or None for no values."""
    vals = [float(v) for v in values]
    return finite(statistics.median(vals)) if vals else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (any order), or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[index])


def merge_hists(hists: Iterable[Iterable[Sequence[float]]]) -> list[tuple[float, int]]:
    """Merge ``[[value, count], ...]`` histograms into one sorted list."""
    total: dict[float, int] = {}
    for hist in hists:
        for value, count in hist:
            total[value] = total.get(value, 0) + int(count)
    return sorted(total.items())


def hist_percentile(hist: Sequence[tuple[float, int]], q: float) -> float | None:
    """Nearest-rank percentile of a merged histogram, or None when empty."""
    n = sum(c for _, c in hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(q / 100 * n))
    seen = 0
    for value, count in hist:
        seen += count
        if seen >= rank:
            return float(value)
    return float(hist[-1][0])


def probe_histogram(log: Path, t0: float, t1: float) -> list[tuple[float, int]]:
    """The merged wake-up histogram of t1_probe intervals, in microseconds."""
    recs = [r for r in read_log(log, t0, t1) if "wake" in r]
    return [(ns / 1000.0, count) for ns, count in merge_hists(r["wake"] for r in recs)]


def probe_figures(log: Path, t0: float, t1: float) -> Figures:
    """Wake-up/response percentiles (us) and missed periods (%) of t1_probe intervals."""
    recs = [r for r in read_log(log, t0, t1) if "wake" in r]
    wake = merge_hists(r["wake"] for r in recs)
    resp = merge_hists(r["resp"] for r in recs)
    samples = sum(int(r["samples"]) for r in recs)
    missed = sum(int(r["missed"]) for r in recs)

    def us(value: float | None) -> float | None:
        return None if value is None else value / 1000.0

    return {
        "wake_p50_us": us(hist_percentile(wake, 50)),
        "wake_p99_us": us(hist_percentile(wake, 99)),
        "resp_p99_us": us(hist_percentile(resp, 99)),
        "missed_pct": 100.0 * missed / (samples + missed) if samples + missed else None,
    }


def hog_figures(log: Path, t0: float, t1: float, ncpu: int | None = None) -> Figures:
    """A t1_hog's rate (M iterations/s) and its share of the machine's CPUs (%)."""
    recs = [r for r in read_log(log, t0, t1) if "iters" in r]
    seconds = sum(r["end"] - r["start"] for r in recs)
    if seconds <= 0:
        return {"rate": None, "cpu_pct": None}
    ncpu = ncpu or os.cpu_count() or 1
    return {
        "rate": sum(r["iters"] for r in recs) / seconds / 1e6,
        "cpu_pct": 100.0 * sum(r["cpu_s"] for r in recs) / seconds / ncpu,
    }


def ncpu() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


class BenchWorkload(Workload):
    """A workload with native programs and the session plumbing the others share."""

    #: native sources (NATIVE_DIR/<name>.c) it needs compiled
    natives: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.bins: dict[str, Path] = {}
        self.cache: Path | None = None

    def unavailable(self) -> str | None:
        """Why it cannot run here (a missing command), or None."""
        missing = [c for c in self.commands if which(c) is None]
        return f"missing {', '.join(missing)}" if missing else None

    def prepare(self, cache: Path) -> None:
        """Compile the native programs into ``cache`` (once per source digest)."""
        self.cache = Path(cache)
        for source in self.natives:
            self.bins[source] = build_native(self.cache, source)

    def binary(self, source: str) -> str:
        """The compiled program of ``source`` (prepare() must have run)."""
        if source not in self.bins:
            raise RuntimeError(f"{self.name}: call prepare(cache) before start()")
        return str(self.bins[source])

    def distribution(self, session: Session, t0: float,
                     t1: float) -> dict[str, list[tuple[float, int]]]:
        """Optional, for plots: latency histograms over the window, ``{name: [(us, count)]}``.

        Not part of the :class:`Workload` contract; workloads with a probe
        override it, the others have none ({}).
        """
        return {}

    def new_session(self, run_dir: Path) -> Session:
        """An empty session in ``run_dir`` (created), matching its command lines."""
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        return Session(workload=self.name, dir=run_dir, log=run_dir / "units.jsonl",
                       match=run_dir_match(run_dir))

    def spawn_driver(self, session: Session, argv: Sequence[str], parser: str | None = None,
                     pause: float = 0.0, log: Path | None = None,
                     **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start the loop driver of the measured unit, logging to ``log`` (``session.log``)."""
        kwargs.setdefault("env", python_env())
        return session.spawn(driver_argv(log or session.log, argv, parser, pause), **kwargs)

    def spawn_hog(self, session: Session, threads: int, log_name: str = "hog.jsonl",
                  interval_ms: int = 500) -> subprocess.Popen[bytes]:
        """Start a t1_hog batch neighbour (``threads`` spinning threads) logging per interval."""
        log = session.dir / log_name
        session.extra.setdefault("logs", {})[log_name] = str(log)
        return session.spawn([self.binary("t1hog"), "0", str(threads), str(log), str(interval_ms)])

    def spawn_probe(self, session: Session, period_us: int, work_us: int, threads: int,
                    log_name: str = "probe.jsonl",
                    interval_ms: int = 500) -> subprocess.Popen[bytes]:
        """Start a t1_probe periodic latency probe logging a histogram per interval."""
        log = session.dir / log_name
        session.extra.setdefault("logs", {})[log_name] = str(log)
        return session.spawn([self.binary("t1probe"), "0", str(period_us), str(work_us),
                              str(threads), "1", str(log), str(interval_ms)])


def wait_ready(session: Session, proc: subprocess.Popen[bytes], what: str,
               address: str | tuple[str, int], timeout: float = 20.0) -> None:
    """Wait until ``address`` (a unix socket path or (host, port)) accepts connections.

    Raises RuntimeError (with the session's stderr tail) when ``proc`` exits
    first or ``timeout`` passes; the session is stopped then.
    """
    deadline = time.monotonic() + timeout
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(address)
                return
            except OSError:
                time.sleep(0.02)
    session.stop()
    errors = session.dir / "stderr.log"
    tail = errors.read_text(errors="replace")[-800:] if errors.exists() else ""
    state = f"exited with {proc.returncode}" if proc.returncode is not None else "timed out"
    raise RuntimeError(f"{what} did not come up ({state}): {tail}")
