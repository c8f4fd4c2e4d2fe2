"""MCP resources: the policy repository, the last workload summary, deployments.

Each resource is read with one call of the tool table (the same checks,
the same authorization by the daemon as the tool of that name):

==================================  =======================================
``schedcp://summary``               ``GetSummary("brief")``: the latest window
``schedcp://summary/{detail}``      ``GetSummary(detail)``: brief, normal, full
``schedcp://policies``              ``ListPolicies("")``: every live policy
``schedcp://policies/{policy_id}``  ``GetPolicy(policy_id)``
``schedcp://deployments``           ``ListDeployments()``
``schedcp://deployments/{id}``      ``GetDeployment(id)``
``schedcp://status``                ``GetStatus()``: daemon, caller, access
==================================  =======================================

``resources/list`` names the fixed ones and one resource per live policy.
A URI that is none of these, a refused call or an unknown id is a JSON-RPC
error whose message says which.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from schedcp_agent.client import DaemonError
from schedcp_agent.tools import check_arguments, tool
from schedcp_mcp.daemon import Daemon, Unreachable, explain

SCHEME = "schedcp://"
JSON = "application/json"


@dataclass(frozen=True)
class ResourceKind:
    """One kind of resource: a URI pattern read by one tool of the table."""

    template: str
    name: str
    description: str
    tool: str
    fixed: dict[str, Any]

    @property
    def pattern(self) -> re.Pattern[str]:
        """The template as a regex with a named group per ``{placeholder}``."""
        parts = re.split(r"\{(\w+)\}", self.template)
        rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)"
                     for i, p in enumerate(parts))
        return re.compile(rx + r"\Z")

    @property
    def is_template(self) -> bool:
        """Whether the URI has placeholders."""
        return "{" in self.template


KINDS: tuple[ResourceKind, ...] = (
    ResourceKind(SCHEME + "summary", "summary", "The latest workload summary (brief, < 1 KB): "
                 "CPU, load, PSI, run-queue wait, the busiest processes by class.",
                 "GetSummary", {"detail": "brief"}),
    ResourceKind(SCHEME + "summary/{detail}", "summary-detail", "The latest workload summary "
                 "at a detail of brief, normal or full.", "GetSummary", {}),
    ResourceKind(SCHEME + "policies", "policies", "Every live policy of the repository: id, "
                 "name, state, provenance, tags, score.", "ListPolicies", {"query": ""}),
    ResourceKind(SCHEME + "policies/{policy_id}", "policy", "One policy version with its TOML "
                 "document and parameters.", "GetPolicy", {}),
    ResourceKind(SCHEME + "deployments", "deployments", "The newest deployments, newest first.",
                 "ListDeployments", {}),
    ResourceKind(SCHEME + "deployments/{deployment_id}", "deployment", "One deployment: state, "
                 "targets, breaker trip, transitions.", "GetDeployment", {}),
    ResourceKind(SCHEME + "status", "status", "schedcpd's status, with what this user may do "
                 "(access per action).", "GetStatus", {}),
)


def fixed_resources() -> list[types.Resource]:
    """The resources without placeholders."""
    return [types.Resource(uri=k.template, name=k.name, description=k.description,
                           mime_type=JSON) for k in KINDS if not k.is_template]


def templates() -> list[types.ResourceTemplate]:
    """The resource templates."""
    return [types.ResourceTemplate(uri_template=k.template, name=k.name,
                                   description=k.description, mime_type=JSON)
            for k in KINDS if k.is_template]


async def list_resources(daemon: Daemon) -> list[types.Resource]:
    """The fixed resources, and one per live policy when the daemon lets us list them."""
    out = fixed_resources()
    try:
        policies = await daemon.call(tool("ListPolicies"), [""])
    except (DaemonError, Unreachable):
        return out  # the listing still works; reading says what is wrong
    for p in policies if isinstance(policies, list) else []:
        if isinstance(p, dict) and isinstance(p.get("id"), str):
            out.append(types.Resource(
                uri=f"{SCHEME}policies/{p['id']}", name=f"policy {p.get('name', p['id'])}",
                description=str(p.get("description", ""))[:200] or None, mime_type=JSON))
    return out


def resolve(uri: str) -> tuple[ResourceKind, dict[str, Any]]:
    """The kind of ``uri`` and the tool arguments it stands for (MCPError if none)."""
    for kind in KINDS:
        m = kind.pattern.match(uri)
        if m:
            return kind, {**kind.fixed, **m.groupdict()}
    known = ", ".join(k.template for k in KINDS)
    raise MCPError(types.INVALID_PARAMS, f"unknown resource {uri!r}; the resources are: {known}")


async def read_resource(daemon: Daemon, uri: str) -> types.ReadResourceResult:
    """Read ``uri`` with its tool; failures are MCPErrors naming what went wrong."""
    kind, args = resolve(uri)
    t = tool(kind.tool)
    try:
        body = check_arguments(t, args)
        value = await daemon.call(t, body)
    except ValueError as err:
        raise MCPError(types.INVALID_PARAMS, f"{uri}: {err}") from None
    except DaemonError as err:
        code = types.INVALID_PARAMS if err.short in ("NotFound", "InvalidArgument") \
            else types.INTERNAL_ERROR
        raise MCPError(code, f"{uri}: {explain(err)}") from None
    except Unreachable as err:
        raise MCPError(types.INTERNAL_ERROR, f"{uri}: schedcpd is not reachable: {err}") \
            from None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)
    return types.ReadResourceResult(contents=[
        types.TextResourceContents(uri=uri, mime_type=JSON, text=text)])
