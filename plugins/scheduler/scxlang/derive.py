"""Offline synthesis: a scheduler-language program derived from a workload profile by rules.

The rules (issue #20, point 2, the no-model path):

- latency-sensitive wakers (shapes ``latency-beside-cpu-hogs``,
  ``interactive``, ``io-bound``) -> a fast FIFO class with a short slice that
  may preempt the batch class, selected by the latency role's command names
  when the profile has them and by behaviour (wakes often, runs briefly)
  always; the rest shares a weighted-vtime class with a guaranteed share;
- CPU-bound batch (``cpu-batch``) -> a long-slice class that stays on its
  previous CPU with a guaranteed share of at least half the dispatches;
  short wakers keep a short FIFO class with an aging bound;
- build fan-out (``fork-churn``) -> throughput: short jobs shortest-first,
  the build's processes in a vtime class whose slice shrinks with the load,
  on wholly idle cores first;
- long tail (``long-tail-batch``) -> longest job first for tasks that use
  most of a CPU (the long job finishes instead of being overtaken for
  ever), the short jobs FIFO with a guaranteed share;
- anything else -> one weighted-vtime class (fair sharing).

The goal tunes the batch slice (latency: shorter, throughput/makespan:
longer).  Every class gets a starvation guard; the result passes the schema
and static stages by construction (tests check each shape), and is verified
and deployed like any other T2 policy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_COMM = re.compile(r"^[ -~]{1,15}$")
_BATCH_SLICE = {"latency": 3000, "throughput": 20000, "makespan": 10000}


@dataclass
class Derived:
    """A derived program, the T2 policy that carries it, and the rules that fired."""

    program: dict[str, Any]
    text: str
    policy: dict[str, Any]
    rules: list[str] = field(default_factory=list)

    def policy_toml(self) -> str:
        """The policy as a TOML document (for SubmitPolicy)."""
        meta = self.policy["policy"]
        lines = ["[policy]"] + [f"{k} = {_value(v)}" for k, v in meta.items()]
        lines += ["", "[scx]", "program = '''", self.text.rstrip("\n"), "'''"]
        params = self.policy["scx"].get("params", {})
        if params:
            lines += ["", "[scx.params]"] + [f"{k} = {v}" for k, v in params.items()]
        return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(program: dict[str, Any]) -> str:
    """A program as TOML text (tables for scheduler/params, [[class]] entries)."""
    out = ["[scheduler]"] + [f"{k} = {_value(v)}" for k, v in program["scheduler"].items()]
    for name, spec in program.get("params", {}).items():
        out += ["", f"[params.{name}]"] + [f"{k} = {_value(v)}" for k, v in spec.items()]
    for cls in program["class"]:
        out += ["", "[[class]]"] + [f"{k} = {_value(v)}" for k, v in cls.items()]
    return "\n".join(out) + "\n"


def _comms(roles: dict[str, list[str]] | None, *names: str) -> list[str]:
    found: list[str] = []
    for role in names:
        for comm in (roles or {}).get(role, []):
            if _COMM.match(comm) and comm not in found:
                found.append(comm)
    return found[:8]


def _latency(goal: str, roles: dict[str, list[str]] | None, rules: list[str]) -> dict[str, Any]:
    batch_slice = _BATCH_SLICE.get(goal, 5000)
    params = {"fast_slice_us": {"default": 1000, "min": 200, "max": 5000},
              "batch_slice_us": {"default": batch_slice, "min": 1000, "max": 20000},
              "batch_share_pct": {"default": 20, "min": 5, "max": 50}}
    fast = {"order": "fifo", "slice_us": "fast_slice_us", "preempt": ["batch"],
            "preempt_after_us": 1000, "placement": "idle", "guard": {"max_wait_us": 20000}}
    classes = []
    named = _comms(roles, "latency", "interactive")
    if named:
        classes.append({"name": "named", "match": {"comm": named}, **fast})
        rules.append(f"latency role's commands {named} -> fast class 'named'")
    classes.append({"name": "wakers", "match": {"wake_interval_us_max": 50000,
                                                "avg_run_us_max": 1000}, **fast})
    rules.append("latency-sensitive wakers -> fast FIFO class, 1 ms slice, preempts batch")
    classes.append({"name": "batch", "order": "vtime", "slice_us": "batch_slice_us",
                    "placement": "idle", "guard": {"min_share_pct": "batch_share_pct"}})
    rules.append(f"CPU hogs -> vtime class, {batch_slice} us slice, >= 20% of dispatches")
    return {"params": params, "class": classes}


def _batch(goal: str, roles: dict[str, list[str]] | None, rules: list[str]) -> dict[str, Any]:
    rules.append("CPU-bound batch -> long-slice vtime class on its previous CPU, >= 50% share")
    rules.append("short wakers -> FIFO class, 2 ms slice, aging bound 50 ms")
    slice_us = _BATCH_SLICE.get(goal, 20000) if goal != "latency" else 5000
    return {"params": {"batch_slice_us": {"default": slice_us, "min": 1000, "max": 50000}},
            "class": [
                {"name": "wakers", "match": {"wake_interval_us_max": 50000,
                                             "avg_run_us_max": 1000},
                 "order": "fifo", "slice_us": 2000, "guard": {"max_wait_us": 50000}},
                {"name": "batch", "order": "vtime", "slice_us": "batch_slice_us",
                 "placement": "prev", "guard": {"min_share_pct": 50}}]}


def _build(goal: str, roles: dict[str, list[str]] | None, rules: list[str]) -> dict[str, Any]:
    rules.append("build fan-out -> throughput: short jobs shortest-first (aging 20 ms)")
    classes: list[dict[str, Any]] = [
        {"name": "quick", "match": {"avg_run_us_max": 2000, "wake_interval_us_max": 200000},
         "order": "sjf", "slice_us": 2000, "guard": {"max_wait_us": 20000}}]
    build = {"order": "vtime", "slice_us": 5000, "slice_scale": "load", "slice_min_us": 1000,
             "placement": "idle_core"}
    named = _comms(roles, "build")
    if named:
        classes.append({"name": "build", "match": {"comm": named}, **build,
                        "guard": {"min_share_pct": 30}})
        classes.append({"name": "other", "order": "deadline", "deadline_us": 10000,
                        "slice_us": 3000, "guard": {"max_wait_us": 100000}})
        rules.append(f"build role's commands {named} -> load-scaled vtime class, >= 30% share")
    else:
        classes.append({"name": "build", **build, "guard": {"min_share_pct": 30}})
        rules.append("everything else -> load-scaled vtime class (5..1 ms), >= 30% share")
    return {"class": classes}


def _long_tail(goal: str, roles: dict[str, list[str]] | None,
               rules: list[str]) -> dict[str, Any]:
    rules.append("long tail -> longest job first for tasks using >= 50% of a CPU")
    rules.append("short jobs -> FIFO class with >= 25% of dispatches")
    classes: list[dict[str, Any]] = []
    named = _comms(roles, "long")
    ljf = {"order": "ljf", "slice_us": "long_slice_us", "placement": "prev",
           "guard": {"max_wait_us": 100000}}
    if named:
        classes.append({"name": "named", "match": {"comm": named}, **ljf})
        rules.append(f"long role's commands {named} -> the longest-job-first class")
    classes.append({"name": "longest", "match": {"cpu_pct_min": 50}, **ljf})
    classes.append({"name": "jobs", "order": "fifo", "slice_us": 5000,
                    "guard": {"min_share_pct": 25}})
    return {"params": {"long_slice_us": {"default": 10000, "min": 2000, "max": 20000}},
            "class": classes}


def _fair(goal: str, roles: dict[str, list[str]] | None, rules: list[str]) -> dict[str, Any]:
    rules.append("no specific shape -> one weighted-vtime class (fair sharing)")
    return {"class": [{"name": "shared", "order": "vtime", "slice_us": 5000,
                       "guard": {"max_wait_us": 100000}}]}


RULES = {"latency-beside-cpu-hogs": _latency, "interactive": _latency, "io-bound": _latency,
         "cpu-batch": _batch, "fork-churn": _build, "long-tail-batch": _long_tail}


def derive(shape: str, goal: str = "", roles: dict[str, list[str]] | None = None) -> Derived:
    """The program for a profile: its ``shape`` (schedcp_agent.observe.SHAPES), ``goal``
    and, optionally, command names per role (e.g. ``{"latency": ["msglat"]}``)."""
    rules: list[str] = []
    body = RULES.get(shape, _fair)(goal, roles, rules)
    name = ("derived_" + re.sub(r"[^a-z0-9]+", "_", shape.lower())).strip("_")[:24].rstrip("_")
    classes = body["class"]
    program: dict[str, Any] = {
        "scheduler": {"name": name, "description": f"derived by rules for {shape}"
                      + (f" (goal {goal})" if goal else ""),
                      "order": [c["name"] for c in classes]}}
    if body.get("params"):
        program["params"] = body["params"]
    program["class"] = classes
    text = to_toml(program)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{shape}-{goal}".lower()).strip("-")
    policy: dict[str, Any] = {
        "policy": {"name": f"scxl-derived-{slug}"[:63], "track": "T2",
                   "description": f"Scheduler-language program derived by rules for the "
                   f"profile {shape} (goal {goal or 'none'}): " + "; ".join(rules) + ".",
                   "workloads": [shape], "tags": ["sched_ext", "scxlang", "derived",
                                                  f"profile:{goal}.{shape}"]},
        "scx": {"program": text}}
    if body.get("params"):
        policy["scx"]["params"] = {k: v["default"] for k, v in body["params"].items()}
    return Derived(program, text, policy, rules)
