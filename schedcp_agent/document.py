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


def has_groups(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` has ``[[group]]``s the agent can bind to targets.

    A policy without groups (a T2 sched_ext scheduler such as
    ``policies/t2/scx-vtime.toml``) acts on the whole host: the agent, which
    only retunes the processes it was given, skips it.
    """
    groups = doc.get("group")
    return isinstance(groups, list) and any(isinstance(g, dict) for g in groups)


def retarget(base: dict[str, Any], bindings: dict[str, list[int]], *, base_name: str,
             profile_key: str, profile_text: str, goal: str,
             settings: dict[str, Any] | None = None,
             descendants: dict[str, bool] | None = None) -> dict[str, Any]:
    """A copy of ``base`` whose groups select exactly ``bindings[group name]`` by pid.

    Groups without pids are dropped; ``settings`` maps dotted fields to values
    (applied after the groups are final); ``descendants`` overrides a group's
    ``descendants``.  The metadata records the base, the profile and the goal
    as tags, which is how later runs find policies proven for the same profile.
    """
    doc = copy.deepcopy(base)
    groups = []
    for g in doc.get("group", []) if has_groups(doc) else []:
        if not isinstance(g, dict):
            continue
        pids = sorted(set(bindings.get(g.get("name", ""), [])))
        if not pids:
            continue
        g["match"] = {"pid": pids}
        if descendants and g["name"] in descendants:
            g["descendants"] = descendants[g["name"]]
        groups.append(g)
    doc["group"] = groups
    for path, value in (settings or {}).items():
        set_field(doc, path, value)
    doc["parameters"] = _valid_parameters(doc)
    if not doc["parameters"]:
        doc.pop("parameters")
    ident = hashlib.sha256(json.dumps(bindings, sort_keys=True).encode()).hexdigest()[:8]
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
