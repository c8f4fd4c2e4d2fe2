"""Held-out workloads: defined in a TOML file the harness does not ship.

``schedcp-bench run --heldout FILE`` runs only the workloads of ``FILE``, so
a score cannot be tuned to the shipped set.  Each ``[[workload]]``::

    [[workload]]
    name = "probe-beside-spinner"        # [A-Za-z0-9_.-]+
    goal = "latency"                     # latency | throughput | makespan | fairness
    description = "..."                  # optional
    neighbours = [["python3", "-c", "while True: pass"]]   # optional, argv lists
    driver = ["python3", "{here}/probe.py", "--seed", "{seed}"]  # the measured unit
    pause = 0.0                          # seconds between driver runs (optional)
    warmup = 1.0                         # optional
    min_window = 0.0                     # optional: shortest useful window
    roles = { latency = "driver", batch = "neighbours" }     # optional, this default

    [[workload.metric]]
    name = "p99_us"
    unit = "us"
    better = "lower"                     # lower | higher
    regex = 'p99=([0-9.]+)'              # one group, searched in the driver run's stdout
    weight = 1.0                         # optional
    reduce = "median"                    # optional: median | mean | min | max over the window

    [[workload.slo]]                     # optional
    metric = "p99_us"
    op = "<="                            # <= | >=
    value = 10000
    hard = true                          # optional

``{seed}``, ``{dir}`` (the session directory) and ``{here}`` (the TOML
file's directory) are replaced in every argv string.  The driver command runs
again and again under :mod:`schedcp_bench.driver`; each run's stdout gives one
value per metric; a window's value is the ``reduce`` of its complete runs.
Role ``driver`` binds the driver process (its runs are its children, covered
by the policies' ``descendants``), ``neighbours`` every neighbour.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedcp_agent.observe import GOALS
from schedcp_bench.workload import SLO, Metric, Session, Workload

METRICS_ENV = "SCHEDCP_BENCH_HELDOUT_METRICS"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_REDUCE: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median, "mean": statistics.fmean, "min": min, "max": max}
_ROLE_SOURCES = ("driver", "neighbours")
_WORKLOAD_KEYS = {"name", "goal", "description", "neighbours", "driver", "pause", "warmup",
                  "min_window", "roles", "metric", "slo"}
_METRIC_KEYS = {"name", "unit", "better", "regex", "weight", "reduce", "description"}
_SLO_KEYS = {"metric", "op", "value", "hard"}


class HeldoutError(ValueError):
    """The held-out file is invalid; the message names the file, the entry and the field."""


def parse_output(stdout: str, stderr: str) -> dict[str, Any]:
    """The driver's parser: a figure per metric regex (``$SCHEDCP_BENCH_HELDOUT_METRICS``)."""
    out: dict[str, Any] = {}
    missing = []
    for name, rx in json.loads(os.environ.get(METRICS_ENV, "{}")).items():
        m = re.search(rx, stdout)
        if m is None:
            missing.append(name)
            continue
        out[name] = float(m.group(1))
    if missing:
        out["missing"] = missing
    return out


@dataclass
class MetricSpec:
    """A metric of a held-out workload: the contract's Metric plus how to get it."""

    metric: Metric
    regex: str
    reduce: str = "median"


@dataclass
class HeldoutSpec:
    """One validated ``[[workload]]`` entry."""

    name: str
    goal: str
    driver: list[str]
    neighbours: list[list[str]] = field(default_factory=list)
    description: str = ""
    pause: float = 0.0
    warmup: float = 1.0
    min_window: float = 0.0
    roles: dict[str, str] = field(default_factory=lambda: {"latency": "driver",
                                                           "batch": "neighbours"})
    metrics: list[MetricSpec] = field(default_factory=list)
    slos: list[SLO] = field(default_factory=list)
    here: Path = Path(".")


class HeldoutWorkload(Workload):
    """A workload built from a held-out entry."""

    def __init__(self, spec: HeldoutSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.description = spec.description or f"held-out workload {spec.name}"
        self.track = "T1"
        self.goal = spec.goal
        self.metrics = tuple(m.metric for m in spec.metrics)
        self.slos = tuple(spec.slos)
        self.warmup = spec.warmup
        self.min_window = spec.min_window
        self.quick = True
        self.commands = tuple(sorted({argv[0] for argv in [spec.driver, *spec.neighbours]
                                      if "/" not in argv[0]}))

    def unavailable(self) -> str | None:
        """A missing command, or a driver/neighbour path that does not exist."""
        missing = [c for c in self.commands if shutil.which(c) is None]
        for argv in [self.spec.driver, *self.spec.neighbours]:
            first = self._subst(argv, Path("."), 0)[0]
            if "/" in first and not os.access(first, os.X_OK):
                missing.append(first)
        return f"missing {', '.join(missing)}" if missing else None

    def _subst(self, argv: list[str], run_dir: Path, seed: int) -> list[str]:
        rep = {"{seed}": str(seed), "{dir}": str(run_dir), "{here}": str(self.spec.here)}
        out = []
        for a in argv:
            for k, v in rep.items():
                a = a.replace(k, v)
            out.append(a)
        return out

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the neighbours, then the driver loop."""
        run_dir.mkdir(parents=True, exist_ok=True)
        session = Session(self.name, run_dir, run_dir / "units.jsonl")
        neighbours = [self._subst(a, run_dir, seed) for a in self.spec.neighbours]
        driver = self._subst(self.spec.driver, run_dir, seed)
        pids: dict[str, list[int]] = {"driver": [], "neighbours": []}
        for argv in neighbours:
            pids["neighbours"].append(session.spawn(argv).pid)
        env = {**os.environ, METRICS_ENV: json.dumps({m.metric.name: m.regex
                                                      for m in self.spec.metrics}),
               "PYTHONPATH": os.pathsep.join(
                   [str(Path(__file__).resolve().parents[1]),
                    *filter(None, [os.environ.get("PYTHONPATH")])])}
        pids["driver"].append(session.spawn(
            [sys.executable, "-m", "schedcp_bench.driver", "--log", str(session.log),
             "--parser", "schedcp_bench.heldout:parse_output", "--pause",
             str(self.spec.pause), "--", *driver], env=env).pid)
        session.roles = {role: list(pids[src]) for role, src in self.spec.roles.items()
                         if pids[src]}
        exact = "|".join(re.escape(" ".join(a)) for a in [*neighbours, driver])
        session.match = f"^(?:{exact})$|{re.escape(str(run_dir))}"
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Each metric reduced over the window's complete, successful runs."""
        recs = [r for r in session.records(t0, t1) if r.get("rc") == 0 and "error" not in r]
        out: dict[str, float | None] = {}
        for m in self.spec.metrics:
            vals = [float(r[m.metric.name]) for r in recs if m.metric.name in r]
            out[m.metric.name] = _REDUCE[m.reduce](vals) if vals else None
        return out


def _err(where: str, what: str) -> HeldoutError:
    return HeldoutError(f"{where}: {what}")


def _argv(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise _err(where, "expected a non-empty list of strings (an argv)")
    return list(value)


def _num(entry: dict[str, Any], key: str, default: float, where: str,
         minimum: float = 0.0) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise _err(f"{where} field '{key}'", f"expected a number >= {minimum}, got {value!r}")
    return float(value)


def _unknown(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(entry) - allowed)
    if extra:
        raise _err(where, f"unknown field(s) {', '.join(extra)} "
                          f"(allowed: {', '.join(sorted(allowed))})")


def _metric(entry: Any, where: str) -> MetricSpec:
    if not isinstance(entry, dict):
        raise _err(where, "expected a table")
    _unknown(entry, _METRIC_KEYS, where)
    for key in ("name", "unit", "better", "regex"):
        if not isinstance(entry.get(key), str) or not entry.get(key):
            raise _err(f"{where} field '{key}'", "required, a non-empty string")
    if not _NAME.match(entry["name"]):
        raise _err(f"{where} field 'name'", f"{entry['name']!r} is not [A-Za-z0-9_.-]+")
    if entry["better"] not in ("lower", "higher"):
        raise _err(f"{where} field 'better'", f"expected lower or higher, got "
                                              f"{entry['better']!r}")
    try:
        rx = re.compile(entry["regex"])
    except re.error as err:
        raise _err(f"{where} field 'regex'", f"invalid regular expression: {err}") from err
    if rx.groups != 1:
        raise _err(f"{where} field 'regex'", f"needs exactly one group, has {rx.groups}")
    reduce = entry.get("reduce", "median")
    if reduce not in _REDUCE:
        raise _err(f"{where} field 'reduce'", f"expected one of {', '.join(_REDUCE)}, "
                                              f"got {reduce!r}")
    weight = _num(entry, "weight", 1.0, where)
    return MetricSpec(Metric(entry["name"], entry["unit"], entry["better"], weight,
                             str(entry.get("description", ""))), entry["regex"], reduce)


def _slo(entry: Any, where: str, metrics: set[str]) -> SLO:
    if not isinstance(entry, dict):
        raise _err(where, "expected a table")
    _unknown(entry, _SLO_KEYS, where)
    if entry.get("metric") not in metrics:
        raise _err(f"{where} field 'metric'", f"{entry.get('metric')!r} is not a metric of "
                                              f"this workload ({', '.join(sorted(metrics))})")
    if entry.get("op") not in ("<=", ">="):
        raise _err(f"{where} field 'op'", f"expected '<=' or '>=', got {entry.get('op')!r}")
    value = entry.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(f"{where} field 'value'", f"expected a number, got {value!r}")
    hard = entry.get("hard", True)
    if not isinstance(hard, bool):
        raise _err(f"{where} field 'hard'", f"expected true or false, got {hard!r}")
    return SLO(entry["metric"], entry["op"], float(value), hard)


def _entry(entry: Any, where: str, here: Path) -> HeldoutSpec:
    if not isinstance(entry, dict):
        raise _err(where, "expected a table")
    _unknown(entry, _WORKLOAD_KEYS, where)
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _err(f"{where} field 'name'", f"required, [A-Za-z0-9_.-]+, got {name!r}")
    where = f"{where} ({name})"
    goal = entry.get("goal")
    if goal not in GOALS:
        raise _err(f"{where} field 'goal'", f"expected one of {', '.join(GOALS)}, got {goal!r}")
    if "driver" not in entry:
        raise _err(f"{where} field 'driver'", "required (the measured command's argv)")
    driver = _argv(entry["driver"], f"{where} field 'driver'")
    neigh = entry.get("neighbours", [])
    if not isinstance(neigh, list):
        raise _err(f"{where} field 'neighbours'", "expected a list of argv lists")
    neighbours = [_argv(a, f"{where} field 'neighbours[{i}]'") for i, a in enumerate(neigh)]
    roles = entry.get("roles", {"latency": "driver", "batch": "neighbours"})
    if not isinstance(roles, dict) or not all(isinstance(v, str) and v in _ROLE_SOURCES
                                              for v in roles.values()):
        raise _err(f"{where} field 'roles'", "expected a table of role = \"driver\" or "
                                             "\"neighbours\"")
    metrics_raw = entry.get("metric")
    if not isinstance(metrics_raw, list) or not metrics_raw:
        raise _err(f"{where} field 'metric'", "at least one [[workload.metric]] is required")
    metrics = [_metric(m, f"{where} metric[{i}]") for i, m in enumerate(metrics_raw)]
    names = [m.metric.name for m in metrics]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _err(f"{where} field 'metric'", f"duplicate metric name(s) {', '.join(dup)}")
    slos_raw = entry.get("slo", [])
    if not isinstance(slos_raw, list):
        raise _err(f"{where} field 'slo'", "expected [[workload.slo]] tables")
    slos = [_slo(s, f"{where} slo[{i}]", set(names)) for i, s in enumerate(slos_raw)]
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise _err(f"{where} field 'description'", "expected a string")
    return HeldoutSpec(name, goal, driver, neighbours, description,
                       _num(entry, "pause", 0.0, where), _num(entry, "warmup", 1.0, where),
                       _num(entry, "min_window", 0.0, where), dict(roles), metrics, slos, here)


def loads(text: str, source: str = "<heldout>", here: Path = Path(".")) -> list[Workload]:
    """Workloads from held-out TOML text (HeldoutError names the entry and field)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise HeldoutError(f"{source}: not valid TOML: {err}") from err
    _unknown(data, {"workload"}, source)
    entries = data.get("workload")
    if not isinstance(entries, list) or not entries:
        raise HeldoutError(f"{source}: no [[workload]] entries")
    specs = [_entry(e, f"{source}: workload[{i}]", here) for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HeldoutError(f"{source}: duplicate workload name(s) {', '.join(dup)}")
    return [HeldoutWorkload(s) for s in specs]


def load(path: Path) -> list[Workload]:
    """Workloads from the held-out file ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise HeldoutError(f"{path}: cannot read: {err.strerror}") from err
    return loads(text, str(path), Path(path).resolve().parent)
