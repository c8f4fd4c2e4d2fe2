"""Stage 1 for scheduler-language programs: TOML, the JSON Schema, and cross-field rules.

:func:`check` parses a program (TOML text), validates it against
``schema.json`` (shipped beside this module, published in
docs/scheduler-language.md) with :mod:`jsonschema`, then checks what a JSON
Schema cannot say: references to parameters, ``min <= default <= max``,
that every class is in the dispatch order exactly once, that the last class
is the catch-all, identifier rules (:mod:`.names`).  Every finding names the
construct, the JSON path and the line in the program text.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from plugins.scheduler.scxlang import names
from plugins.scheduler.scxlang.lines import LineMap

SCHEMA_PATH = Path(__file__).with_name("schema.json")
MAX_PROGRAM = 16 * 1024
FIELD = "scx.program"
# Ranges of the constructs that may name a parameter: the parameter's whole
# range must lie inside (the schema checks literal values against the same).
REF_RANGES: dict[str, tuple[int, int]] = {
    "slice_us": (100, 100_000), "slice_min_us": (100, 100_000),
    "deadline_us": (100, 1_000_000), "preempt_after_us": (100, 100_000),
    "min_share_pct": (1, 100), "max_wait_us": (100, 1_000_000),
    "wake_interval_us_max": (0, 2**32 - 1), "wake_interval_us_min": (0, 2**32 - 1),
    "avg_run_us_max": (0, 2**32 - 1), "avg_run_us_min": (0, 2**32 - 1),
    "cpu_pct_max": (0, 100), "cpu_pct_min": (0, 100), "cgroup_id": (1, 2**32 - 1),
}


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of the language (schema.json)."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


@dataclass
class Checked:
    """A parsed program and what stage 1 found (``program`` is None if it does not parse)."""

    program: dict[str, Any] | None
    findings: list[dict[str, Any]] = field(default_factory=list)
    lines: LineMap | None = None

    @property
    def ok(self) -> bool:
        """No error findings."""
        return not any(f["severity"] == "error" for f in self.findings)


def construct(program: dict[str, Any] | None, path: Sequence[str | int]) -> str:
    """A reader's name for the construct at ``path`` ("class 'batch' guard", ...)."""
    if not path:
        return "program"
    if path[0] == "class" and len(path) > 1 and isinstance(path[1], int):
        classes = (program or {}).get("class", [])
        name = None
        if isinstance(classes, list) and path[1] < len(classes) \
                and isinstance(classes[path[1]], dict):
            name = classes[path[1]].get("name")
        head = f"class {name!r}" if isinstance(name, str) else f"class #{path[1] + 1}"
        return " ".join([head, *(str(p) for p in path[2:])])
    if path[0] == "params" and len(path) > 1:
        return f"parameter {path[1]!r}" + "".join(f" {p}" for p in path[2:])
    return ".".join(str(p) for p in path)


def _pointer(path: Sequence[str | int]) -> str:
    return "/" + "/".join(str(p) for p in path)


class _Report:
    def __init__(self, program: dict[str, Any] | None, lines: LineMap, source: str) -> None:
        self.program, self.lines, self.source = program, lines, source
        self.findings: list[dict[str, Any]] = []

    def add(self, code: str, path: Sequence[str | int], message: str,
            severity: str = "error") -> None:
        line = self.lines.line(path)
        what = construct(self.program, path)
        self.findings.append({
            "code": code, "severity": severity, "field": f"{FIELD}:{line}" if line else FIELD,
            "line": line, "path": _pointer(path), "construct": what, "file": self.source,
            "message": f"{self.source}: {FIELD} line {line}: {what}: {message}"})


def check(text: str, source: str = "<policy>") -> Checked:
    """Parse and validate one program; findings carry construct, path and line."""
    lines = LineMap(text if isinstance(text, str) else "")
    report = _Report(None, lines, source)
    if not isinstance(text, str) or not text.strip():
        report.add("program-empty", (), "the program is empty")
        return Checked(None, report.findings, lines)
    if len(text.encode()) > MAX_PROGRAM:
        report.add("program-too-large", (), f"longer than {MAX_PROGRAM} bytes")
        return Checked(None, report.findings, lines)
    try:
        program = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        at = re.search(r"line (\d+)", str(err))
        line = int(at.group(1)) if at else 0
        report.findings.append({
            "code": "program-not-toml", "severity": "error", "line": line, "path": "",
            "field": f"{FIELD}:{line}" if line else FIELD, "construct": "program",
            "file": source, "message": f"{source}: {FIELD} line {line}: not TOML: {err}"})
        return Checked(None, report.findings, lines)
    except RecursionError:
        report.add("program-not-toml", (), "nested too deeply to parse")
        return Checked(None, report.findings, lines)
    report.program = program
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(program), key=lambda e: list(map(str, e.path)))
    for error in errors:
        best = best_match([error])
        path = list(best.absolute_path)
        message = best.message
        if best.validator == "maxItems" and path and path[-1] == "class":
            message = f"too many classes (at most {best.validator_value})"
        elif best.validator == "maxItems" and path == ["scheduler", "order"]:
            message = f"too many classes in the order (at most {best.validator_value})"
        elif best.validator == "additionalProperties" and isinstance(best.instance, dict):
            allowed = best.schema.get("properties", {})
            extra = sorted(k for k in best.instance if k not in allowed)
            path += extra[:1]
            message = (f"unknown key {extra[0]!r}; allowed: " if extra else "") \
                + ", ".join(sorted(allowed))
        report.add("schema", path, message)
    if not report.findings:
        _semantics(program, report)
    return Checked(program, report.findings, lines)


def _refs(cls: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """(path inside the class, construct key, value) of every number that may be a ref."""
    out: list[tuple[tuple[str | int, ...], str, Any]] = []
    for key in ("slice_us", "slice_min_us", "deadline_us", "preempt_after_us"):
        if key in cls:
            out.append(((key,), key, cls[key]))
    for key, value in cls.get("guard", {}).items():
        out.append((("guard", key), key, value))
    for key, value in cls.get("match", {}).items():
        if key == "cgroup_id":
            out += [(("match", key, i), key, v) for i, v in enumerate(value)]
        elif key in REF_RANGES:
            out.append((("match", key), key, value))
    return out


def _semantics(program: dict[str, Any], r: _Report) -> None:
    params: dict[str, dict[str, int]] = program.get("params", {})
    classes: list[dict[str, Any]] = program["class"]
    order: list[str] = program["scheduler"]["order"]
    for what, name, path in ([("scheduler", program["scheduler"]["name"], ("scheduler", "name"))]
                             + [("parameter", p, ("params", p)) for p in params]
                             + [("class", c["name"], ("class", i, "name"))
                                for i, c in enumerate(classes)]):
        why = names.problem(name)
        if why:
            r.add("bad-identifier", path, f"{what} name {name!r} {why}")
    for name, spec in params.items():
        if spec["min"] > spec["max"]:
            r.add("range-inverted", ("params", name, "min"),
                  f"min {spec['min']} is greater than max {spec['max']}")
        elif not spec["min"] <= spec["default"] <= spec["max"]:
            r.add("default-out-of-range", ("params", name, "default"),
                  f"default {spec['default']} outside {spec['min']}..{spec['max']}")
    seen: dict[str, int] = {}
    for i, cls in enumerate(classes):
        if cls["name"] in seen:
            r.add("duplicate-class", ("class", i, "name"),
                  f"class {cls['name']!r} is already declared (class #{seen[cls['name']] + 1})")
        seen.setdefault(cls["name"], i)
    for j, name in enumerate(order):
        if name not in seen:
            r.add("unknown-class", ("scheduler", "order", j),
                  f"{name!r} is not a declared class; declared: {', '.join(seen)}")
    used: set[str] = set()
    for i, cls in enumerate(classes):
        at: tuple[str | int, ...] = ("class", i)
        if cls["name"] not in order:
            r.add("class-never-dispatched", (*at, "name"),
                  f"class {cls['name']!r} is not in scheduler.order: its tasks would be queued "
                  "and never dispatched (the kernel's watchdog would eject the scheduler)")
        if "match" not in cls and i != len(classes) - 1:
            r.add("unreachable-class", (*at, "name"),
                  "only the last class may have no selectors (it is the catch-all); every "
                  "class after this one could never be chosen")
        if "match" in cls and i == len(classes) - 1:
            r.add("no-catch-all", (*at, "match"),
                  "the last class must have no selectors (the catch-all), so that every task "
                  "has a class")
        for sub, key, value in _refs(cls):
            if isinstance(value, str):
                used.add(value)
                _check_ref(r, params, (*at, *sub), key, value)
        _check_class(r, program, i, cls, params)
    for name in params:
        if name not in used:
            r.add("unused-parameter", ("params", name), "no construct uses this parameter",
                  severity="warning")


def _check_ref(r: _Report, params: dict[str, dict[str, int]], path: tuple[str | int, ...],
               key: str, name: str) -> None:
    if name not in params:
        r.add("unknown-parameter", path, f"{name!r} is not a declared parameter; declared: "
              + (", ".join(params) or "none"))
        return
    lo, hi = REF_RANGES[key]
    spec = params[name]
    if spec["min"] < lo or spec["max"] > hi:
        r.add("parameter-range", path, f"parameter {name!r} may be {spec['min']}.."
              f"{spec['max']}, but {key} must stay within {lo}..{hi}")


def bounds_of(value: Any, params: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(least, greatest) value of a literal or a parameter reference."""
    if isinstance(value, str):
        spec = params[value]
        return spec["min"], spec["max"]
    return int(value), int(value)


def _check_class(r: _Report, program: dict[str, Any], i: int, cls: dict[str, Any],
                 params: dict[str, dict[str, int]]) -> None:
    at: tuple[str | int, ...] = ("class", i)
    known = all(not isinstance(v, str) or v in params for _, _, v in _refs(cls))
    if cls.get("slice_scale") == "load" and "slice_min_us" not in cls:
        r.add("missing", (*at, "slice_scale"), "slice_scale = \"load\" needs slice_min_us")
    if cls["order"] == "deadline" and "deadline_us" not in cls:
        r.add("missing", (*at, "order"), "order = \"deadline\" needs deadline_us")
    if "deadline_us" in cls and cls["order"] != "deadline":
        r.add("unused", (*at, "deadline_us"), "deadline_us is used only with order = "
              "\"deadline\"", severity="warning")
    if known and "slice_min_us" in cls and \
            bounds_of(cls["slice_min_us"], params)[1] > bounds_of(cls["slice_us"], params)[0]:
        r.add("range-inverted", (*at, "slice_min_us"), "slice_min_us may exceed slice_us")
    match = cls.get("match", {})
    for low, high in (("wake_interval_us_min", "wake_interval_us_max"),
                      ("avg_run_us_min", "avg_run_us_max"), ("cpu_pct_min", "cpu_pct_max")):
        if known and low in match and high in match and \
                bounds_of(match[low], params)[0] > bounds_of(match[high], params)[1]:
            r.add("range-inverted", (*at, "match", low), f"{low} is above {high}: the class "
                  "could never match")
    classes = [c["name"] for c in program["class"]]
    for j, victim in enumerate(cls.get("preempt", [])):
        if victim not in classes:
            r.add("unknown-class", (*at, "preempt", j), f"{victim!r} is not a declared class")
        elif victim == cls["name"]:
            r.add("self-preempt", (*at, "preempt", j), "a class cannot preempt itself")
    if "preempt_after_us" in cls and not cls.get("preempt"):
        r.add("unused", (*at, "preempt_after_us"), "preempt_after_us without preempt",
              severity="warning")
