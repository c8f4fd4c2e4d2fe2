"""Parameter ranges: what the verifier proves once for a whole box of parameter points.

A policy's ``[parameters]`` declare numeric ranges over fields of its
document.  Versions that differ only in those fields' values (a tuner's
trials) share a *template*: the document with every parameter field blanked
and the descriptive metadata (description, tags, workloads) dropped.  The
*box* is the product of the declared ranges.

Range verification (``[verifier] range_verification``, docs/verifier.md)
runs the dynamic stage at the box's corners and centre (:func:`probe_points`)
and, when all pass, remembers ``(template digest, box) -> report digest``
(:class:`RangeCache`).  A later version with the same template whose values
lie inside the box (:meth:`RangeCache.covering`) has its dynamic stage
covered by that report; its schema and static stages still run on the
version itself, and its token binds its own digest as always.

The argument, and its limits, are in docs/verifier.md ("Range
verification"): the T1 knobs a range can vary (nice, slice, timer slack,
CPU weight and quota, sysctl numbers) act monotonically on what the dynamic
test checks (progress, starvation, stall), so the extremes of each axis,
taken jointly at the corners, bound every interior point.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass
from typing import Any

MAX_DIMENSIONS = 4
"""Beyond this many parameters (2^4 + 1 = 17 dynamic runs) a box is not verified as one."""

_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
_BLANK = "<parameter>"
_DESCRIPTIVE = ("description", "tags", "workloads")


def _walk(doc: Any, path: str) -> tuple[Any, str | int]:
    """The container holding ``path``'s last part, and that part (KeyError/IndexError)."""
    parts = path.split(".")
    node = doc
    for i, part in enumerate(parts):
        m = _FIELD.match(part)
        if m is None:
            raise KeyError(path)
        last = i == len(parts) - 1
        if last and m.group(2) is None:
            return node, m.group(1)
        node = node[m.group(1)]
        if m.group(2) is not None:
            if last:
                return node, int(m.group(2))
            node = node[int(m.group(2))]
    raise KeyError(path)


def get_field(doc: dict[str, Any], path: str) -> Any:
    """The value at ``group[1].task.nice``-style ``path``."""
    parent, key = _walk(doc, path)
    return parent[key]


def set_field(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set the value at ``path`` (the containers must exist)."""
    parent, key = _walk(doc, path)
    parent[key] = value


Box = dict[str, tuple[str, float, float]]
"""Parameter name -> (field, min, max)."""


def box_of(doc: dict[str, Any]) -> Box:
    """The numeric ranges the document declares (fields that exist, min < max)."""
    out: Box = {}
    params = doc.get("parameters")
    if not isinstance(params, dict):
        return out
    for name, spec in sorted(params.items()):
        if not isinstance(spec, dict):
            continue
        lo, hi, fld = spec.get("min"), spec.get("max"), spec.get("field")
        if not isinstance(fld, str) or isinstance(lo, bool) or isinstance(hi, bool) \
                or not isinstance(lo, int | float) or not isinstance(hi, int | float):
            continue
        try:
            value = get_field(doc, fld)
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and lo < hi:
            out[name] = (fld, float(lo), float(hi))
    return out


def template_digest(doc: dict[str, Any], box: Box) -> str:
    """SHA-256 of the document with the box's fields blanked and descriptive metadata dropped."""
    tmpl = copy.deepcopy(doc)
    for fld, _lo, _hi in box.values():
        set_field(tmpl, fld, _BLANK)
    meta = tmpl.get("policy")
    if isinstance(meta, dict):
        for key in _DESCRIPTIVE:
            meta.pop(key, None)
    return hashlib.sha256(json.dumps(tmpl, sort_keys=True).encode()).hexdigest()


def probe_points(doc: dict[str, Any], box: Box) -> list[tuple[dict[str, float | int], dict]]:
    """The box's corners and centre, each as (point, document with the point written in).

    Integer fields stay integers (the centre rounds down).
    """
    ints = {name: isinstance(get_field(doc, fld), int) for name, (fld, _l, _h) in box.items()}

    def typed(name: str, v: float) -> float | int:
        return int(v) if ints[name] else v

    names = list(box)
    points = [dict(zip(names, corner, strict=True))
              for corner in itertools.product(*[(box[n][1], box[n][2]) for n in names])]
    points.append({n: (box[n][1] + box[n][2]) / 2 for n in names})
    out = []
    for raw in points:
        point = {n: typed(n, v) for n, v in raw.items()}
        variant = copy.deepcopy(doc)
        for name, value in point.items():
            set_field(variant, box[name][0], value)
        out.append((point, variant))
    return out


def point_of(doc: dict[str, Any], box: Box) -> dict[str, float] | None:
    """The document's values of the box's fields (None if one is missing or not a number)."""
    out = {}
    for name, (fld, _lo, _hi) in box.items():
        try:
            value = get_field(doc, fld)
        except (KeyError, IndexError, TypeError):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        out[name] = float(value)
    return out


@dataclass(frozen=True)
class VerifiedRange:
    """A box whose corners and centre passed the dynamic stage."""

    template: str
    box: Box
    report_digest: str
    policy_id: str
    expires: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what a covered stage names)."""
        return {"template_digest": self.template, "report_digest": self.report_digest,
                "verified_policy_id": self.policy_id, "expires": self.expires,
                "box": {n: [lo, hi] for n, (_f, lo, hi) in self.box.items()}}


class RangeCache:
    """Verified ranges by template digest, in memory, each for ``lifetime`` seconds.

    A daemon restart forgets them: the next version verifies its range again.
    """

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._ranges: dict[str, list[VerifiedRange]] = {}

    def remember(self, template: str, box: Box, report_digest: str, policy_id: str,
                 now: float | None = None) -> VerifiedRange:
        """Record a verified box."""
        now = time.time() if now is None else now
        rng = VerifiedRange(template, dict(box), report_digest, policy_id, now + self.lifetime)
        self._ranges.setdefault(template, []).append(rng)
        return rng

    def covering(self, doc: dict[str, Any], now: float | None = None) -> VerifiedRange | None:
        """An unexpired verified range with the document's template and box containing it."""
        now = time.time() if now is None else now
        box = box_of(doc)
        if not box:
            return None
        template = template_digest(doc, box)
        live = [r for r in self._ranges.get(template, []) if r.expires > now]
        self._ranges[template] = live
        point = point_of(doc, box)
        if point is None:
            return None
        for rng in live:
            if rng.box == box and all(rng.box[n][1] <= v <= rng.box[n][2]
                                      for n, v in point.items()):
                return rng
        return None
