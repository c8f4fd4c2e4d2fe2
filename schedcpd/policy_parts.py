"""Multi-subsystem policies: one document, a part per subsystem, handled as one.

A policy document names one subsystem (``[policy] subsystem = "io"``; its
groups and settings are top-level tables, as always) or several::

    [policy]
    name = "database"
    subsystems = ["scheduler", "io"]     # the order parts are applied in
    description = "..."

    [[scheduler.group]]                   # the scheduler's part: a whole
    name = "db"                           # scheduler document under [scheduler]
    match = { comm = ["postgres"] }
    task = { slice_us = 500 }

    [[io.group]]                          # the io plugin's part, under [io]
    name = "db"
    match = { comm = ["postgres"] }
    ioprio = { class = "be", level = 0 }

Each part is the table named after its subsystem, handed to that
subsystem's plugin as a document of its own (with the ``[policy]`` table
copied in and ``subsystem`` set), so every plugin validates, checks,
applies and restores its part exactly as it would a single-subsystem
policy: the engine learns no subsystem's fields.  What the engine adds is
the *one*: the policy's digest covers every part, its token names them all
(claim ``subsystem`` is the parts' names joined by ``+``, its scope lists
the subsystems and each part's groups as ``<subsystem>/<group>``), and
:mod:`schedcpd.deploy_parts` applies the parts in order and restores the
applied ones when any fails.

A single-subsystem document is one part (the whole document) whose groups
keep their plain names; nothing about it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tomli_w

from schedcpd.errors import InvalidArgument
from schedcpd.payloads import ActivePolicy

SEPARATOR = "+"
"""Joins a multi-subsystem policy's subsystems into its ``subsystem`` label."""
QUALIFIER = "/"
"""Joins a part's subsystem and one of its group names (``io/db``)."""
_META_KEYS = ("name", "description", "track", "workloads", "tags", "version")
MAX_PARTS = 8


@dataclass(frozen=True)
class Part:
    """One subsystem's part of a policy: its plugin's document."""

    subsystem: str
    doc: dict[str, Any]
    qualified: bool
    """Whether its group names are qualified (a part of a multi-subsystem policy)."""

    def group(self, name: str) -> str:
        """The name the engine uses for this part's group ``name``."""
        return f"{self.subsystem}{QUALIFIER}{name}" if self.qualified else name

    def groups(self) -> list[Any]:
        """The part's group names, as its document has them."""
        return [g.get("name") for g in self.doc.get("group", []) if isinstance(g, dict)]


def in_part(finding: Any, part: Part) -> Any:
    """A part's finding, its field named from the document's top (``io.group[0].ioprio``).

    A finding of a single-subsystem policy's one part is returned as it is.
    """
    if not part.qualified:
        return finding
    raw = str(finding.get("field") or "")
    reason = str(finding.get("message", ""))
    marker = f": {raw}: "
    if raw and marker in reason:  # the plugin's own "source: field: " prefix
        reason = reason.split(marker, 1)[1]
    return {**finding, "field": f"{part.subsystem}.{raw}" if raw else part.subsystem,
            "message": reason}


def is_multi(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` names several subsystems (``[policy] subsystems``)."""
    meta = doc.get("policy")
    return isinstance(meta, dict) and "subsystems" in meta


def label(subsystems: list[str]) -> str:
    """The ``subsystem`` a multi-subsystem policy is stored and signed under."""
    return SEPARATOR.join(subsystems)


def subsystems_of(subsystem: str) -> list[str]:
    """The subsystems a stored ``subsystem`` label stands for (one for most policies)."""
    return subsystem.split(SEPARATOR) if subsystem else [subsystem]


def declared(doc: dict[str, Any], source: str) -> list[str]:
    """The subsystems of a multi-subsystem document; :class:`InvalidArgument` when malformed.

    Checks the frame the engine owns: the list itself, a table per
    subsystem, nothing else at the top level.  What is inside each part is
    its plugin's to check.
    """
    meta = doc["policy"]
    names = meta.get("subsystems")
    if "subsystem" in meta:
        raise InvalidArgument(f"{source}: policy.subsystems: give either subsystem (one) "
                              "or subsystems (several), not both")
    if not isinstance(names, list) or not names or \
            not all(isinstance(n, str) and n for n in names):
        raise InvalidArgument(f"{source}: policy.subsystems: a non-empty list of subsystem "
                              "names is required")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"{source}: policy.subsystems: a subsystem is named twice")
    if len(names) > MAX_PARTS:
        raise InvalidArgument(f"{source}: policy.subsystems: at most {MAX_PARTS} subsystems")
    bad = [n for n in names if SEPARATOR in n or QUALIFIER in n or n in ("policy",)]
    if bad:
        raise InvalidArgument(f"{source}: policy.subsystems: {bad[0]!r} is not a subsystem "
                              "name")
    if meta.get("track", "T1") != "T1":
        raise InvalidArgument(f"{source}: policy.track: a multi-subsystem policy is T1 "
                              "(a T2 artifact's token binding names one subsystem)")
    for name in names:
        if not isinstance(doc.get(name), dict):
            raise InvalidArgument(f"{source}: {name}: policy.subsystems names {name!r}, so "
                                  f"a [{name}] table (its part) is required")
    extra = sorted(set(doc) - {"policy", *names})
    if extra:
        raise InvalidArgument(f"{source}: {extra[0]}: unknown table; in a multi-subsystem "
                              "policy everything but [policy] belongs in a subsystem's "
                              f"table ({', '.join(names)})")
    return list(names)


def split(doc: dict[str, Any], subsystem: str, source: str = "<policy>") -> list[Part]:
    """The parts of a parsed document stored under ``subsystem`` (its label)."""
    if not is_multi(doc):
        return [Part(subsystem, doc, False)]
    names = declared(doc, source)
    meta = doc["policy"]
    head = {k: meta[k] for k in _META_KEYS if k in meta}
    return [Part(name, {**doc[name], "policy": {**head, "subsystem": name}}, True)
            for name in names]


def scope_of(doc: dict[str, Any]) -> dict[str, Any]:
    """What a token signs as the policy's scope (see :func:`repository.policy_scope`)."""
    if not is_multi(doc):
        return {"groups": [g.get("name") for g in doc.get("group", []) if isinstance(g, dict)]}
    parts = split(doc, "", "<policy>")
    return {"subsystems": [p.subsystem for p in parts],
            "groups": [p.group(str(g)) for p in parts for g in p.groups()]}


def active_for(subsystem: str, active: list[ActivePolicy],
               parse: Any) -> list[ActivePolicy]:
    """The live policies' parts of ``subsystem``, as documents of that subsystem alone.

    For a plugin's conflict analysis (``schedcp_static_check``): a part of
    a live multi-subsystem policy is shown as the document its plugin
    applied.  ``parse``: TOML text -> document.
    """
    out: list[ActivePolicy] = []
    for policy in active:
        names = subsystems_of(policy.get("subsystem", subsystem))
        if subsystem not in names:
            continue
        if len(names) == 1:
            out.append(policy)
            continue
        for part in split(parse(policy["document"]), policy["subsystem"]):
            if part.subsystem == subsystem:
                out.append({**policy, "subsystem": subsystem,
                            "document": tomli_w.dumps(part.doc)})
    return out
