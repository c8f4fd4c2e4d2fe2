"""Policy documents on the agent side: TOML out, re-targeting, dotted fields.

The agent never invents knobs: it takes a repository policy's document
(parsed from GetPolicy) and binds its groups to the processes the profile
found, by group name (``latency``, ``batch``, ``build``, ``long``, ``short``,
``foreground``): ``match = { pid = [...] }``.  The result is written back as
TOML with :func:`dump` (a small writer for the subset policies use: strings,
numbers, booleans, lists, inline tables, tables and arrays of tables).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_FIELD = re.compile(r"^([a-z_]+)(?:\[(\d+)\])?$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # TOML basic strings use JSON's escapes for these
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(path: str, table: dict[str, Any], out: list[str], header: str) -> None:
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
    if scalars or len(scalars) == len(table):  # a table of tables needs no header of its own
        out.append(header)
        out.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
        out.append("")
    for k, v in table.items():
        sub = f"{path}.{_key(k)}" if path else _key(k)
        if _is_table(v):
            _table(sub, v, out, f"[{sub}]")
        elif _is_table_array(v):
            for item in v:
                _table(sub, item, out, f"[[{sub}]]")


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump(doc: dict[str, Any]) -> str:
    """TOML text of ``doc``; groups keep ``match``/``task``/``cgroup`` as inline tables."""
    out: list[str] = []
    for k, v in doc.items():
        if k == "group" and isinstance(v, list):
            for g in v:
                out.append("[[group]]")
                out.extend(f"{_key(gk)} = {_value(gv)}" for gk, gv in g.items())
                out.append("")
        elif _is_table(v):
            _table(_key(k), v, out, f"[{_key(k)}]")
        elif _is_table_array(v):
            for item in v:
                _table(_key(k), item, out, f"[[{_key(k)}]]")
        else:
            out.insert(0, f"{_key(k)} = {_value(v)}")
    return "\n".join(out).rstrip() + "\n"


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
