"""Stage 2 for scheduler-language programs: a worst-case wait for every class.

The compiled ``dispatch`` (see :mod:`.compiler`) first serves, in dispatch
order, a class whose starvation guard is *due*, then the first non-empty
class in dispatch order.  A guard is due

- ``max_wait_us = A``: when the class has waited ``A`` without being served;
- ``min_share_pct = s``: when ``K - 1`` dispatches (``K = ceil(100 / s)``)
  went to other classes while it waited.

The model, stated so that it can be checked against the code (one CPU that
may serve the class is assumed: more CPUs only dispatch more often):

1. ``S`` is the longest slice any class can get and ``sigma_j`` the longest
   slice of class ``j`` (each at the top of its parameter's range).  A
   dispatch hands a CPU to one task for at most its slice; a CPU with
   nothing to run dispatches at once.
2. Class ``c`` becomes due after ``T_c``: ``A_c`` for an aging bound (at the
   top of its range), ``(K_c - 1) * S`` for a share (its percentage at the
   bottom of its range).
3. Once ``c`` is due, the CPU first finishes what it runs (at most ``S``),
   then only a due class *ahead* of ``c`` in the order is served before
   ``c``.  A guard resets when its class is served, so in that phase (time
   ``x``, ``m`` dispatches) an aging class ``k`` ahead is served at most
   ``1 + x / A_k`` times (``A_k`` at the bottom of its range) and a share
   class at most ``1 + m / K_k`` times, each service lasting at most
   ``sigma_k``.  With ``H`` classes ahead, ``a = sum 1/A_k``, ``b = sum
   1/K_k``, ``alpha = sum sigma_k/A_k``, ``beta = sum sigma_k/K_k`` and
   ``C = sum sigma_k``:  ``m <= (H + x a) / (1 - b)`` and
   ``x <= C + x alpha + m beta``, so
   ``x* = (C + beta H / (1 - b)) / (1 - alpha - beta a / (1 - b))`` when
   both denominators are positive; otherwise the classes ahead could take
   every dispatch and the wait is unbounded.
4. ``W_c = T_c + S + x*``: the worst-case wait of the task at the head of
   class ``c``'s queue.  It must stay under :data:`WAIT_LIMIT_MS`, well
   under the scheduler's watchdog (``timeout_ms``), which ejects it if a
   task waits longer.

Inside a class the queue order decides who is at the head; every order's
key is bounded (fifo: arrival; vtime: one slice of lag; deadline: arrival +
deadline; sjf and ljf: arrival + at most 100 ms), so a task is overtaken
only by tasks that arrived at most that much later -- reported, not bounded
in time (that depends on how many arrive).
"""

from __future__ import annotations

import math
from typing import Any

from plugins.scheduler.scxlang.compiler import TIMEOUT_MS
from plugins.scheduler.scxlang.schema import bounds_of

WAIT_LIMIT_MS = 1000.0
_OVERTAKE = {"fifo": "none: arrival order",
             "vtime": "tasks with less weighted CPU time: a key is within -1..+8 slices of the "
                      "virtual clock (weights clamped to 25..400)",
             "deadline": "arrival + deadline_us * 100 / weight (at most 4x deadline_us)",
             "sjf": "arrival + expected run, at most 100 ms",
             "ljf": "arrival + (10 s - CPU time so far) / 100, at most 100 ms"}


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def slice_max_ns(program: dict[str, Any]) -> int:
    """The longest slice any class of ``program`` can get, in ns."""
    params = program.get("params", {})
    return max(bounds_of(c["slice_us"], params)[1] for c in program["class"]) * 1000


def _guard(cls: dict[str, Any], params: dict[str, Any]) -> tuple[str, int, int]:
    """(kind, least value, greatest value) of a class's guard."""
    kind, value = next(iter(cls["guard"].items()))
    lo, hi = bounds_of(value, params)
    return kind, lo, hi


def class_bounds(program: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class (declaration order): the wait bound and how it was computed."""
    params = program.get("params", {})
    s_ns = slice_max_ns(program)
    by_name = {c["name"]: c for c in program["class"]}
    order: list[str] = program["scheduler"]["order"]
    out = []
    for cls in program["class"]:
        item: dict[str, Any] = {"class": cls["name"], "slice_max_ms": _ms(s_ns),
                                "overtaken_by": _OVERTAKE[cls["order"]]}
        out.append(item)
        if "guard" not in cls:
            item.update(bound_ms=None, reason="no starvation guard")
            continue
        kind, lo, hi = _guard(cls, params)
        if kind == "max_wait_us":
            due_ns = hi * 1000
            item["guard"] = f"max_wait_us = {hi} (at most)"
        else:
            k = math.ceil(100 / lo)
            due_ns = (k - 1) * s_ns
            item["guard"] = f"min_share_pct = {lo} (at least): served once every {k} dispatches"
        ahead = order[:order.index(cls["name"])] if cls["name"] in order else []
        item.update(due_after_ms=_ms(due_ns), ahead=ahead)
        if cls["name"] not in order:
            item.update(bound_ms=None, reason="not in the dispatch order")
            continue
        a = b = alpha = beta = c_ns = 0.0
        for name in ahead:
            j_kind, j_lo, _ = _guard(by_name[name], params)
            sigma = bounds_of(by_name[name]["slice_us"], params)[1] * 1000
            c_ns += sigma
            if j_kind == "max_wait_us":
                a += 1 / (j_lo * 1000)
                alpha += sigma / (j_lo * 1000)
            else:
                b += 1 / math.ceil(100 / j_lo)
                beta += sigma / math.ceil(100 / j_lo)
        denominator = 1 - alpha - (beta * a / (1 - b) if b < 1 else math.inf)
        if b >= 1 or denominator <= 0:
            item.update(bound_ms=None, reason=(
                f"the guards of the classes ahead ({', '.join(ahead)}) could take every "
                f"dispatch (share of dispatches {b:.0%}, of time {alpha:.0%} by aging)"))
            continue
        phase = (c_ns + beta * len(ahead) / (1 - b)) / denominator
        bound = due_ns + s_ns + phase
        item.update(ahead_phase_ms=_ms(phase), bound_ms=_ms(bound),
                    formula=f"W = T + S + x = {_ms(due_ns)} + {_ms(s_ns)} + {_ms(phase)} ms")
    return out


def findings(program: dict[str, Any], line_of: Any) -> list[dict[str, Any]]:
    """Static findings: an error for a class whose wait is unbounded or too long, and
    the computed bound of every class as evidence.  ``line_of(path)`` gives lines."""
    out = []
    for i, item in enumerate(class_bounds(program)):
        line = line_of(("class", i, "guard")) or line_of(("class", i))
        where = f"scx.program:{line}" if line else "scx.program"
        name = f"class {item['class']!r}"
        bound = item.get("bound_ms")
        if bound is None:
            out.append({"code": "wait-unbounded", "severity": "error", "field": where,
                        "line": line, "construct": f"{name} guard", "evidence": item,
                        "message": f"scx.program line {line}: {name}: no bounded wait: "
                        f"{item['reason']}"})
        elif bound > WAIT_LIMIT_MS:
            out.append({"code": "wait-too-long", "severity": "error", "field": where,
                        "line": line, "construct": f"{name} guard", "evidence": item,
                        "message": f"scx.program line {line}: {name}: worst-case wait "
                        f"{bound} ms ({item['formula']}) exceeds {WAIT_LIMIT_MS:.0f} ms "
                        f"(the watchdog ejects at {TIMEOUT_MS} ms): raise the share or "
                        "lower the aging bound or the slices"})
        else:
            out.append({"code": "wait-bound", "severity": "info", "field": where,
                        "line": line, "construct": f"{name} guard", "evidence": item,
                        "message": f"{name}: worst-case head-of-queue wait {bound} ms "
                        f"({item['formula']}; {item['guard']})"})
    return out
