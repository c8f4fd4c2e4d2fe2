"""Policy documents on the agent side: TOML out, re-targeting, dotted fields.

The agent never invents knobs: it takes a repository policy's document
(parsed from GetPolicy) and binds its groups to the processes the profile
found, by group name (``latency``, ``batch``, ``build``, ``long``, ``short``,
``foreground``): ``match = { pid = [...] }``.  The result is written back as
TOML with :func:`dump` (tomli-w).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

import tomli_w

_FIELD = re.compile(r"^([a-z_]+)(?:\[(\d+)\])?$")


def dump(doc: dict[str, Any]) -> str:
    """TOML text of ``doc`` that :mod:`tomllib` reads back as ``doc``.

    Written by tomli-w (any string, including characters outside the BMP,
    quotes, backslashes and control characters, is escaped correctly); strings
    with line breaks are written as multi-line strings so that an operator
    reads a description as prose, unless some string holds a carriage return:
    TOML reads a CRLF inside a multi-line string back as LF, so such a
    document is written with one-line strings (``\\r\\n`` escaped) to stay
    exact.  Raises TypeError for a value TOML cannot hold (None, an object).
    """
    return tomli_w.dumps(doc, multiline_strings=not _has_carriage_return(doc))


def _has_carriage_return(value: Any) -> bool:
    if isinstance(value, str):
        return "\r" in value
    if isinstance(value, dict):
        return any(_has_carriage_return(k) or _has_carriage_return(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_carriage_return(v) for v in value)
    return False


def get_field(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path like ``group[1].task.nice`` (KeyError/IndexError if absent)."""
    node: Any = doc
    for part in path.split("."):
        m = _FIELD.match(part)
        if m is None:
            raise KeyError(path)
        node = node[m.group(1)]
        if m.group(2) is not None:
            node = node[int(m.group(2))]
    return node


def set_field(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set the value at a dotted path (the containers must exist)."""
    head, _, last = path.rpartition(".")
    parent = get_field(doc, head) if head else doc
    parent[last] = value


def _valid_parameters(doc: dict[str, Any]) -> dict[str, Any]:
    """Keep only parameters whose field still exists with a value in range."""
    kept = {}
    for name, spec in doc.get("parameters", {}).items():
        if not isinstance(spec, dict) or "field" not in spec:
            continue
        try:
            value = get_field(doc, spec["field"])
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            if ("min" in spec and value < spec["min"]) or ("max" in spec and value > spec["max"]):
                continue
        kept[name] = spec
    return kept


MATCH_KEY = {"scheduler": "pid", "io": "pids", "dvfs": "pids"}
"""The selector each subsystem's groups take explicit process ids in."""

DEVICE_TABLES = {"io": "device"}
"""Machine-wide tables of a part that name a block device (``[[device]] name``)."""


def subsystems(doc: dict[str, Any]) -> list[str]:
    """The subsystems of ``doc``: ``[policy] subsystems``, or the one ``subsystem`` (scheduler)."""
    meta = doc.get("policy", {}) if isinstance(doc.get("policy"), dict) else {}
    many = meta.get("subsystems")
    if isinstance(many, list) and many:
        return [str(s) for s in many]
    return [str(meta.get("subsystem", "scheduler"))]


def parts(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(subsystem, field prefix, part table) of each part of ``doc``.

    A single-subsystem document is one part, the document itself, with prefix
    ``""``; a multi-subsystem one (``[policy] subsystems``) has one part per
    subsystem, the table named after it, with prefix ``"<subsystem>."``.
    """
    meta = doc.get("policy", {}) if isinstance(doc.get("policy"), dict) else {}
    if not (isinstance(meta.get("subsystems"), list) and meta["subsystems"]):
        return [(subsystems(doc)[0], "", doc)]
    out = []
    for sub in subsystems(doc):
        part = doc.get(sub)
        if isinstance(part, dict):
            out.append((sub, f"{sub}.", part))
    return out


def groups(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(qualified name, group) of every group of every part: ``io/bulk-writer`` in a multi one."""
    out = []
    multi = len(parts(doc)) > 1 or bool(doc.get("policy", {}).get("subsystems"))
    for sub, _prefix, part in parts(doc):
        for g in part.get("group", []) if isinstance(part.get("group"), list) else []:
            if isinstance(g, dict):
                out.append((f"{sub}/{g.get('name')}" if multi else str(g.get("name")), g))
    return out


def has_groups(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` has ``[[group]]``s the agent can bind to targets (in any part).

    A policy without groups (a T2 sched_ext scheduler such as
    ``policies/t2/scx-vtime.toml``) acts on the whole host: the agent, which
    only retunes the processes it was given, skips it.
    """
    return bool(groups(doc))


def devices_of(doc: dict[str, Any]) -> list[str]:
    """The block devices the document's machine-wide device tables name."""
    out = []
    for sub, _prefix, part in parts(doc):
        table = DEVICE_TABLES.get(sub)
        for d in part.get(table, []) if table and isinstance(part.get(table), list) else []:
            if isinstance(d, dict):
                out.append(str(d.get("name")))
    return out


def _retarget_part(sub: str, part: dict[str, Any], bindings: dict[str, list[int]],
                   descendants: dict[str, bool] | None, devices: list[str]) -> None:
    """Bind one part's groups (by pid) and aim its device tables at ``devices`` (or drop)."""
    key = MATCH_KEY.get(sub, "pid")
    kept = []
    for g in part.get("group", []) if isinstance(part.get("group"), list) else []:
        if not isinstance(g, dict):
            continue
        pids = sorted(set(bindings.get(g.get("name", ""), [])))
        if not pids:
            continue
        g["match"] = {key: pids}
        if descendants and g["name"] in descendants and sub == "scheduler":
            g["descendants"] = descendants[g["name"]]
        kept.append(g)
    part["group"] = kept
    table = DEVICE_TABLES.get(sub)
    if table and isinstance(part.get(table), list):
        first = next((d for d in part[table] if isinstance(d, dict)), None)
        if first is None or not devices:
            part.pop(table)
        else:
            part[table] = [{**copy.deepcopy(first), "name": dev} for dev in devices]
    if "parameters" in part:
        part["parameters"] = _valid_parameters(part)
        if not part["parameters"]:
            part.pop("parameters")


def retarget(base: dict[str, Any], bindings: dict[str, list[int]], *, base_name: str,
             profile_key: str, profile_text: str, goal: str,
             settings: dict[str, Any] | None = None,
             descendants: dict[str, bool] | None = None,
             devices: list[str] | None = None) -> dict[str, Any]:
    """A copy of ``base`` whose groups select exactly ``bindings[group name]`` by pid.

    Every part of a multi-subsystem document is bound (a group is looked up
    by its own name in each part); each subsystem's pid selector is used
    (:data:`MATCH_KEY`).  Groups without pids are dropped; ``settings`` maps
    dotted fields to values (applied after the groups are final);
    ``descendants`` overrides a scheduler group's ``descendants``.  An io
    part's ``[[device]]`` tables (machine-wide) are aimed at ``devices`` --
    the block devices the user let the agent change -- and dropped when
    there are none.  The metadata records the base, the profile and the
    goal as tags, which is how later runs find policies proven for the same
    profile.
    """
    doc = copy.deepcopy(base)
    split = len(parts(doc)) > 1 or "subsystems" in doc.get("policy", {})
    for sub, _prefix, part in parts(doc):
        _retarget_part(sub, part, bindings, descendants, list(devices or []))
        if split and not part["group"] and not any(
                isinstance(v, list) and v for v in part.values()):
            doc.pop(sub)  # nothing of this part is left to apply
            doc["policy"]["subsystems"].remove(sub)
    for path, value in (settings or {}).items():
        set_field(doc, path, value)
    doc["parameters"] = _valid_parameters(doc)
    if not doc["parameters"]:
        doc.pop("parameters")
    ident = hashlib.sha256(json.dumps([bindings, sorted(devices or [])],
                                      sort_keys=True).encode()).hexdigest()[:8]
    meta = doc.setdefault("policy", {})
    old_tags = [t for t in meta.get("tags", []) if not t.startswith(("profile:", "base:",
                                                                      "goal:", "agent"))]
    meta["name"] = f"agent-{base_name}"[:54] + f"-{ident}"
    description = " ".join(str(meta.get("description", base_name)).split())
    marker = " [schedcp-agent:"
    description = description.split(marker)[0]
    meta["description"] = (f"{description}{marker} {base_name} bound to pids for: "
                           f"{profile_text}]")
    meta["workloads"] = [profile_text]
    meta["tags"] = [*old_tags, "agent", f"profile:{profile_key}", f"base:{base_name}",
                    f"goal:{goal}"]
    # Keep [policy] first so the document reads like the built-ins.
    return {"policy": doc.pop("policy"), **doc}
