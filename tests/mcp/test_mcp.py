"""schedcp-mcp through the MCP SDK's own client, against a real schedcpd on a private bus.

Each test spawns the server as an MCP client does (stdio), as root or as
another user, and checks what comes back: the tool table, observation,
the submit -> verify -> plan -> deploy -> rollback path on a process the test
owns, holds tied to the MCP session, the daemon's refusals, and clear errors
for bad input that leave the server and the daemon running.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from schedcp_agent.tools import TOOLS, claude_tools
from schedcpd.keys import KeyStore
from tests.deploy.conftest import forced_token, policy_text, verified_token
from tests.harness import call, wait_deployment, wait_until_async
from tests.mcp.conftest import mcp_client, ok, read_json, refused

ERR = "org.schedcp.Control1.Error."


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


async def test_the_tools_are_the_shared_table_and_resources_are_listed(mcp_daemon) -> None:
    async with mcp_client(mcp_daemon.address) as client:
        listed = (await client.list_tools()).tools
        assert [t.name for t in listed] == [t.name for t in TOOLS]
        for served, declared in zip(listed, TOOLS, strict=True):
            assert served.description == declared.description
            assert served.input_schema == declared.schema()
            assert served.annotations is not None
            assert served.annotations.read_only_hint is (declared.action == "org.schedcp.observe")
        # The agent's model gets the very same schemas for its tools.
        by_name = {t.name: t for t in listed}
        for d in claude_tools("plan", cache=False):
            assert d["input_schema"] == by_name[d["name"]].input_schema
            assert d["description"] == by_name[d["name"]].description

        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"schedcp://summary", "schedcp://policies", "schedcp://deployments",
                "schedcp://status"} <= uris
        builtin = json.loads(call(mcp_daemon.address, "ListPolicies", "s", ""))
        assert {f"schedcp://policies/{p['id']}" for p in builtin} <= uris
        templates = {t.uri_template for t in
                     (await client.list_resource_templates()).resource_templates}
        assert templates == {"schedcp://summary/{detail}", "schedcp://policies/{policy_id}",
                             "schedcp://deployments/{deployment_id}"}


async def test_observe_through_tools_and_resources(mcp_daemon) -> None:
    async with mcp_client(mcp_daemon.address) as client:
        status = ok(await client.call_tool("GetStatus", {}))
        assert status["caller"]["uid"] == 0
        summary = ok(await client.call_tool("GetSummary", {"detail": "brief"}))
        assert isinstance(summary, dict) and summary, summary
        probes = ok(await client.call_tool("ListProbes", {}))
        assert probes, probes
        perf = ok(await client.call_tool(
            "RunPerfStat", {"pid": os.getpid(), "cgroup": "", "seconds": 0.3}))
        assert isinstance(perf, dict), perf

        policies = ok(await client.call_tool("ListPolicies", {"query": ""}))
        assert len(policies) >= 2, policies
        found = ok(await client.call_tool("ListPolicies", {"query": policies[0]["name"]}))
        assert policies[0]["id"] in [p["id"] for p in found]
        one = ok(await client.call_tool("GetPolicy", {"policy_id": policies[0]["id"]}))
        assert one["id"] == policies[0]["id"] and "[policy]" in one["document"]

        # Resources are read with the same calls.
        assert isinstance(await read_json(client, "schedcp://summary"), dict)
        one = await read_json(client, f"schedcp://policies/{policies[0]['id']}")
        assert one["id"] == policies[0]["id"]
        listed = await read_json(client, "schedcp://policies")
        assert {p["id"] for p in listed} == {p["id"] for p in policies}


async def _wait_state(client: Any, dep: str, states: set[str]) -> dict[str, Any]:
    async def reached() -> dict[str, Any]:
        info = ok(await client.call_tool("GetDeployment", {"deployment_id": dep}))
        return info if info["state"] in states else {}

    return await wait_until_async(reached, 30, f"{dep} in {states}", interval=0.2)


async def test_submit_verify_plan_deploy_and_roll_back(mcp_daemon, workload) -> None:
    hog = workload.hogs[0].pid
    text = policy_text("mcp-deploy", [("batch", [hog], "{ nice = 4 }")])
    async with mcp_client(mcp_daemon.address) as client:
        policy_id = ok(await client.call_tool("SubmitPolicy", {"document": text}))
        verified = ok(await client.call_tool("VerifyPolicy", {"policy_id": policy_id}))
        assert set(verified) == {"token", "report"}
        assert verified["token"], verified["report"]
        token = verified["token"]

        plan = ok(await client.call_tool("PlanDeployment", {"token": token}))
        nice = [c for c in plan["plan"]["changes"]
                if c["target"].startswith(f"task:{hog}:") and c["knob"] == "nice"]
        assert [(c["before"], c["after"]) for c in nice] == [(0, 4)], plan
        assert _nice(hog) == 0  # a plan writes nothing

        dep = ok(await client.call_tool("Deploy", {"token": token}))
        assert dep.startswith("dep-")
        await _wait_state(client, dep, {"canary", "active"})
        assert _nice(hog) == 4
        assert (await read_json(client, f"schedcp://deployments/{dep}"))["id"] == dep

        why = ok(await client.call_tool("Explain", {"subject": str(hog)}))
        [nice] = [v for v in why["values"] if v["knob"] == "nice"]
        assert (nice["owner"], nice["effect"]) == (dep, "in effect: 0 -> 4"), nice
        assert why["deployments"][dep]["policy"]["id"] == policy_id
        assert why["deployments"][dep]["report"]["passed"] is True

        back = ok(await client.call_tool("Rollback", {"deployment_id": dep}))
        assert back["state"] == "reverted", back
        assert _nice(hog) == 0
        why = ok(await client.call_tool("Explain", {"subject": dep}))
        [target] = [t for t in why["targets"] if t.startswith(f"task:{hog}:")]
        assert {v["knob"]: v["effect"] for v in why["targets"][target]}["nice"] == \
            "restored: 4 -> 0"
        # A finished deployment: the daemon's named errors, saying why.
        for name, error, why in (("Rollback", "Conflict", f"{dep} is already reverted"),
                                 ("HoldDeployment", "InvalidArgument", f"{dep} is not running")):
            message = refused(await client.call_tool(name, {"deployment_id": dep}))
            assert ERR + error in message and why in message, message
        # The token was used up; the daemon says so by name.
        assert ERR + "TokenReplayed" in refused(await client.call_tool("Deploy", {"token": token}))


async def test_a_hold_lasts_as_long_as_the_mcp_session(mcp_daemon, workload) -> None:
    hog = workload.hogs[0].pid
    _, token = verified_token(mcp_daemon.address, policy_text(
        "mcp-hold", [("batch", [hog], "{ nice = 3 }")]))
    async with mcp_client(mcp_daemon.address) as client:
        dep = ok(await client.call_tool("Deploy", {"token": token}))
        assert ok(await client.call_tool("HoldDeployment", {"deployment_id": dep})) == "done"
        await _wait_state(client, dep, {"canary", "active"})
        assert _nice(hog) == 3
    # The client closed the session: the server exited, its D-Bus connection closed.
    info = wait_deployment(mcp_daemon.address, dep, {"reverted", "failed"}, timeout=15)
    assert "disconnected" in info["reason"], info
    assert _nice(hog) == 0


async def test_a_user_without_the_right_gets_the_daemons_error(
        mcp_daemon, workload, test_users: dict[str, int]) -> None:
    hog = workload.hogs[0].pid
    text = policy_text("mcp-denied", [("batch", [hog], "{ nice = 5 }")])
    _, root_token = verified_token(mcp_daemon.address, text)
    nobody, member = test_users["nobody"], test_users["member"]
    async with mcp_client(mcp_daemon.address, uid=nobody) as client:
        # The server runs as the user who started it, and the daemon sees that user.
        assert ok(await client.call_tool("GetStatus", {}))["caller"]["uid"] == nobody
        assert ok(await client.call_tool("GetSummary", {"detail": "brief"}))  # everyone observes
        for name, args in (("SubmitPolicy", {"document": text}),
                           ("Deploy", {"token": root_token}),
                           ("RunPerfStat", {"pid": hog, "cgroup": "", "seconds": 0.2})):
            message = refused(await client.call_tool(name, args))
            assert f"{name} refused: {ERR}AccessDenied" in message, message
    # Group schedcp may submit (the default group_actions) but not verify or deploy.
    async with mcp_client(mcp_daemon.address, uid=member) as client:
        policy_id = ok(await client.call_tool("SubmitPolicy", {"document": text}))
        message = refused(await client.call_tool("VerifyPolicy", {"policy_id": policy_id}))
        assert ERR + "AccessDenied" in message, message
        message = refused(await client.call_tool("Deploy", {"token": root_token}))
        assert ERR + "AccessDenied" in message, message
    assert _nice(hog) == 0
    audit = json.loads(call(mcp_daemon.address, "GetAudit", "us", 50, "Deploy"))
    assert {r["uid"] for r in audit if r["result"] == ERR + "AccessDenied"} >= {nobody, member}


WRONG_ARGUMENTS: list[tuple[str, dict[str, Any], str]] = [
    ("GetSummary", {"detail": 5}, "GetSummary: detail must be a string"),
    ("GetSummary", {"detail": "huge"}, "detail must be one of ['brief', 'normal', 'full']"),
    ("GetPolicy", {}, "missing required argument 'policy_id'"),
    ("ListProbes", {"verbose": True}, "unknown argument(s) ['verbose']"),
    ("RunPerfStat", {"pid": "1", "cgroup": "", "seconds": 1}, "pid must be an integer"),
    ("RunPerfStat", {"pid": True, "cgroup": "", "seconds": 1}, "pid must be an integer"),
    ("RunPerfStat", {"pid": 1, "cgroup": "", "seconds": "two"}, "seconds must be a finite number"),
    ("RunProbe", {"name": "x", "seconds": 1e9, "pid": 0}, "seconds must be <= 60"),
    ("SubmitPolicy", {"document": ["a", "list"]}, "document must be a string"),
    ("Explain", {"subject": 4242}, "subject must be a string"),
]


def _audit_rows(address: str) -> int:
    return len(json.loads(call(address, "GetAudit", "us", 1000, "")))


async def test_wrong_arguments_are_named_before_anything_reaches_the_bus(mcp_daemon) -> None:
    before = _audit_rows(mcp_daemon.address)
    async with mcp_client(mcp_daemon.address) as client:
        for name, args, message in WRONG_ARGUMENTS:
            text = refused(await client.call_tool(name, args))
            assert text.startswith("invalid arguments: ") and message in text, (name, text)
    # None of them became a call: the audited methods among them left no row.
    assert _audit_rows(mcp_daemon.address) == before


async def test_bad_input_gets_named_errors_and_nothing_crashes(mcp_daemon, workload,
                                                               tmp_path) -> None:
    policy_id = call(mcp_daemon.address, "SubmitPolicy", "s", policy_text(
        "mcp-foreign", [("batch", [workload.hogs[0].pid], "{ nice = 6 }")]))
    KeyStore(tmp_path / "keys")  # another host's verifier key
    foreign = forced_token(tmp_path, mcp_daemon.address, policy_id)
    async with mcp_client(mcp_daemon.address) as client:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("Reload", {}, "unknown tool 'Reload'"),  # admin methods are not MCP tools
            ("GetPolicy", {"policy_id": "0" * 64}, ERR + "NotFound"),
            ("GetDeployment", {"deployment_id": "dep-000000000000"}, ERR + "NotFound"),
            ("GetDeployment", {"deployment_id": "nope"}, "looks like dep-0123456789ab"),
            ("Deploy", {"token": foreign}, ERR + "UnknownKey"),
            ("PlanDeployment", {"token": foreign}, ERR + "UnknownKey"),
            ("Deploy", {"token": "schedcp1.e30.AAAA"}, ERR + "InvalidToken"),
            ("SubmitPolicy", {"document": "[policy]\nname = 'x'\n[[group]]\n"}, ERR),
            ("Rollback", {"deployment_id": "dep-000000000000"}, ERR + "NotFound"),
            ("Explain", {"subject": "99999999999"}, ERR + "InvalidArgument"),
            ("Explain", {"subject": "dep-000000000000"}, ERR + "NotFound"),
        ]
        for name, args, message in cases:
            text = refused(await client.call_tool(name, args))
            assert message in text, (name, text)
        with pytest.raises(MCPError, match="unknown resource 'schedcp://nope'"):
            await client.read_resource("schedcp://nope")
        with pytest.raises(MCPError, match="NotFound"):
            await client.read_resource("schedcp://policies/" + "0" * 64)
        with pytest.raises(MCPError, match="detail must be one of"):
            await client.read_resource("schedcp://summary/huge")
        # The server and the daemon are still there and answer.
        assert ok(await client.call_tool("GetStatus", {}))["caller"]["uid"] == 0
    assert mcp_daemon.proc is not None and mcp_daemon.proc.poll() is None
    assert "Traceback" not in mcp_daemon.log_text()
    assert _nice(workload.hogs[0].pid) == 0


async def test_without_a_daemon_or_a_bus_each_call_says_so(fresh_bus, tmp_path) -> None:
    # A bus with no schedcpd on it: the bus's ServiceUnknown, with what it means.
    async with mcp_client(fresh_bus.address) as client:
        assert len((await client.list_tools()).tools) == len(TOOLS)
        message = refused(await client.call_tool("GetStatus", {}))
        assert "org.freedesktop.DBus.Error.ServiceUnknown" in message, message
        assert "schedcpd is not running on this bus" in message
        with pytest.raises(MCPError, match="not running on this bus"):
            await client.read_resource("schedcp://summary")
        # resources/list still answers (the fixed resources) without the daemon.
        assert "schedcp://summary" in {str(r.uri) for r in
                                       (await client.list_resources()).resources}
    # No bus at all: the server starts and names the address it could not reach.
    missing = f"unix:path={tmp_path}/no-bus"
    async with mcp_client(missing) as client:
        for _ in range(2):  # and tries again on the next call
            message = refused(await client.call_tool("GetSummary", {"detail": "brief"}))
            assert "schedcpd is not reachable" in message and missing in message, message
