"""schedcp as users run it: the .deb in a Debian 12 guest with systemd as PID 1.

The one boot (conftest.py's ``booted``, shared with test_systemd_cgroups.py)
of the systemd guest (plugins/scheduler/microvm/systemd_guest.py: the
sched_ext guest kernel, a Debian 12 image with systemd, udev, dbus and
polkitd, cgroup v2 unified) runs scenario.sh as its job: install this build
with apt (with SCHEDCP_GUEST_UPGRADE=1: install the previous build first and
upgrade), then drive schedcpd.service with systemctl (ready, reload, a
verified policy deployed through D-Bus and restored by stop, D-Bus
activation, the watchdog; cgroups.sh's steps, kill -9 among them, are
test_systemd_cgroups.py's), run ``systemd-analyze security``, the polkit
matrix with the real polkitd, ``schedcp-agent.service`` optimizing a
workload as its own user, and ``apt purge``.  The tests read its report
(docs/packaging.md has the figures).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from plugins.scheduler.microvm.guest import GuestResult
from schedcpd import __version__
from tests.conftest import PREVIOUS_SUFFIX
from tests.harness import ROOT
from tests.packaging.conftest import unit_capabilities
from tests.systemd_guest.conftest import AGENT_ENV, UPGRADE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.tcg, pytest.mark.systemd_guest,
              pytest.mark.timeout(3000)]

UNIT_FILE = ROOT / "systemd" / "schedcpd.service"
CAP_NUMBERS = {"dac_override": 1, "net_admin": 12, "sys_ptrace": 19, "sys_nice": 23,
               "perfmon": 38, "bpf": 39}


def out(result: GuestResult, step: str, status: int | None = 0) -> list[str]:
    """The output of a ``run`` step (checking its exit status unless None)."""
    exit_event = result.first(step, "exit")
    assert exit_event is not None, (step, sorted(result.events))
    if status is not None:
        assert exit_event["status"] == status, (step, result.output.get(step))
    return result.output.get(step, [])


def event(result: GuestResult, step: str, name: str) -> dict[str, Any]:
    found = result.first(step, name)
    assert found is not None, (step, name, result.step(step), result.output.get(step))
    return found


def test_debian_boots_with_systemd_as_pid1_and_cgroup_v2(booted: GuestResult) -> None:
    lines = out(booted, "system")
    assert lines[0] == "systemd"
    assert lines[1] == "cgroup2fs"
    assert lines[2].startswith("12.")
    assert lines[3] in ("running", "degraded"), lines
    assert lines[4:6] == ["active", "active"], lines  # dbus.service, polkit.service
    boot = event(booted, "init", "boot")
    assert int(boot["multi_user_us"]) > int(boot["userspace_us"]) > 0


def test_installs_with_apt_and_starts(booted: GuestResult) -> None:
    lines = out(booted, "install")
    assert any("Setting up schedcp" in line for line in lines), lines
    unit = event(booted, "install", "unit")
    assert unit["version"] == __version__
    assert (unit["active"], unit["sub"], unit["type"]) == ("active", "running", "notify")
    assert unit["restarts"] == 0


def test_upgrade_from_the_previous_build_restarts_the_service(booted: GuestResult) -> None:
    if booted.first("install-prev", "exit") is None:
        pytest.skip(f"the upgrade runs with {UPGRADE_ENV}=1")
    out(booted, "install-prev")
    before = event(booted, "install-prev", "unit")
    assert before["version"] == __version__ + PREVIOUS_SUFFIX
    assert (before["active"], before["sub"], before["type"]) == ("active", "running", "notify")
    assert any("Unpacking schedcp" in line and "over" in line
               for line in out(booted, "install")), booted.output.get("install")
    unit = event(booted, "install", "unit")
    assert unit["pid"] != before["pid"]


def test_ready_through_notify_means_the_name_is_owned(booted: GuestResult) -> None:
    # Type=notify: systemd marks the unit active only on READY=1, which
    # schedcpd sends after it owns its name; STATUS= came through too.
    unit = event(booted, "install", "unit")
    status_text = out(booted, "status-text")
    assert status_text and status_text[0].strip(), status_text
    owner = dict(line.split("=", 1) for line in out(booted, "owner") if "=" in line)
    assert owner["PID"] == str(unit["pid"]), owner
    assert owner["Unit"] == "schedcpd.service", owner
    reply = json.loads("".join(out(booted, "getstatus")))
    status = json.loads(reply["data"][0])
    assert status["authorization"] == "polkit"
    assert status["state_dir"] == "/var/lib/schedcp"


def test_runs_in_its_unit_with_the_shipped_hardening(booted: GuestResult) -> None:
    lines = out(booted, "cgroup")
    assert lines == ["0::/system.slice/schedcpd.service", "/system.slice/schedcpd.service"]
    fields = dict(line.split(":\t", 1) for line in out(booted, "caps"))
    wanted = sum(1 << CAP_NUMBERS[c] for c in unit_capabilities(UNIT_FILE))
    assert int(fields["CapBnd"], 16) == wanted and int(fields["CapEff"], 16) == wanted
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # SystemCallFilter= in force


def test_reload_rereads_the_configuration_in_the_same_process(booted: GuestResult) -> None:
    out(booted, "reload")
    after = event(booted, "reload", "after")
    assert after["pid_after"] == after["pid_before"]
    assert after["logged"] == 0 and after["active"] == "active"


def test_stop_restores_what_a_deployment_changed(booted: GuestResult) -> None:
    before = event(booted, "targets", "pids")["before"]
    assert before == "SCHED_OTHER"
    verified = event(booted, "deploy1", "verified")
    assert verified["status"] == 0, booted.output.get("deploy1")
    applied = event(booted, "deploy1", "applied")
    assert applied["hog1"] == applied["hog2"] == "SCHED_IDLE", booted.output.get("deploy1")
    out(booted, "stop")
    stopped = event(booted, "stop", "after")
    assert (stopped["active"], stopped["result"]) == ("inactive", "success")
    assert stopped["hog1"] == stopped["hog2"] == before


def test_a_call_to_the_stopped_daemon_starts_it_through_systemd(booted: GuestResult) -> None:
    """D-Bus activation: dbus-daemon asks systemd for schedcpd.service (SystemdService=)."""
    status = json.loads(json.loads(out(booted, "start")[-1])["data"][0])
    assert status["authorization"] == "polkit", status
    unit = event(booted, "start", "unit")
    assert (unit["active"], unit["sub"], unit["restarts"]) == ("active", "running", 0), unit
    assert unit["pid"] != event(booted, "install", "unit")["pid"]
    logged = out(booted, "activation")
    assert any("Activating via systemd" in line and "schedcpd.service" in line
               for line in logged), logged


def test_watchdog_pings_arrive_and_nothing_is_killed(booted: GuestResult) -> None:
    pinged = event(booted, "watchdog", "pinged")
    assert int(pinged["now_us"]) > int(pinged["first_us"])
    unit = event(booted, "watchdog", "unit")
    assert unit["watchdog"] == "30s"
    assert unit["active"] == "active" and unit["restarts"] == 0
    assert unit["pid"] == event(booted, "start", "unit")["pid"]


def test_systemd_analyze_security_of_the_running_unit(booted: GuestResult) -> None:
    lines = out(booted, "security")
    overall = next(line for line in lines if "Overall exposure level" in line)
    score = float(re.search(r":\s*([0-9.]+)", overall).group(1))  # type: ignore[union-attr]
    print(f"systemd-analyze security: {overall.strip()}")
    assert score < 5.0, "\n".join(lines)


def _calls(result: GuestResult, step: str) -> dict[tuple[str, str], int]:
    return {(e["user"], e["method"]): e["status"] for e in result.step(step)
            if e.get("event") == "call"}


def test_polkit_decides_for_real_users(booted: GuestResult) -> None:
    calls = _calls(booted, "polkit")
    assert calls, booted.step("polkit")
    for user in ("root", "member", "stranger"):
        assert calls[(user, "GetStatus")] == 0  # observe: everyone
    assert calls[("root", "SubmitPolicy")] == 0 and calls[("root", "Reload")] == 0
    # No rule: auth_admin_keep without an agent is a no for everyone but root.
    for user in ("member", "stranger"):
        assert calls[(user, "SubmitPolicy")] != 0 and calls[(user, "Reload")] != 0, calls
    refusals = [e["error"] for e in booted.step("polkit")
                if e.get("event") == "call" and e["status"] != 0]
    assert all("not authorized" in text and "(polkit)" in text for text in refusals), refusals
    assert event(booted, "polkit-rule", "loaded")["status"] == 0
    granted = _calls(booted, "polkit-granted")
    assert granted[("member", "SubmitPolicy")] == 0 and granted[("member", "Reload")] == 0
    assert granted[("stranger", "SubmitPolicy")] != 0 and granted[("stranger", "Reload")] != 0


def _watch_report(lines: list[str]) -> dict[str, Any]:
    """The watcher's ``--json`` report among its journal lines (progress lines are prefixed)."""
    text = "\n".join(line for line in lines if not line.startswith("schedcp-agent:"))
    start = text.find("{")
    assert start >= 0, lines
    report, _ = json.JSONDecoder().raw_decode(text[start:])
    return report  # type: ignore[no-any-return]


def test_the_agent_service_optimizes_a_workload_as_its_own_user(booted: GuestResult) -> None:
    """schedcp-agent.service as shipped (no capability, PrivateUsers=, its own uid)."""
    if booted.first("agent-start", "exit") is None:
        pytest.skip(f"the agent's unit runs with {AGENT_ENV}=1 (docs/packaging.md)")
    out(booted, "agent-start")
    started = event(booted, "agent", "started")
    assert started["active"] == "active"
    assert started["uid"] != 0 and started["process_uid"] == started["uid"], started
    ended = event(booted, "agent", "ended")
    journal = out(booted, "agent-journal")
    assert (ended["result"], ended["status"]) == ("success", "0"), (ended, journal[-40:])
    actions = _watch_report(journal)["actions"]
    assert len(actions) == 1, actions
    assert any("new heavy process tree" in t for t in actions[0]["triggers"]), actions[0]
    report = actions[0]["report"]
    spinners = {int(p) for p in event(booted, "agent", "spinners")["pids"].split()}
    assert set(report["saw"]["roles"]["batch"]) == spinners, report["saw"]
    attempt = report["attempts"][0]
    assert attempt["candidate"]["base"] == "batch-throughput", attempt
    # The daemon deployed it for the agent's uid: verified, token, canary.
    listed = json.loads(json.loads(out(booted, "agent-deployments")[-1])["data"][0])
    mine = [d for d in listed if d["uid"] == started["uid"]]
    assert mine, listed
    print("agent in the guest:", report["status"],
          [(d["name"], d["state"], d.get("reason")) for d in mine])


# What apt and dpkg themselves keep (logs, lists, status), not the package.
PACKAGE_MANAGER_PATHS = ("/var/lib/dpkg/", "/var/lib/apt/", "/var/cache/apt/", "/var/log/",
                         "/var/cache/debconf/", "/var/cache/ldconfig/")


def test_purge_removes_everything_and_leaves_the_kernel_as_found(booted: GuestResult) -> None:
    out(booted, "purge")
    state = out(booted, "purge-state")
    assert not any("ok installed" in line for line in state) and state[-1] == "not-found", state
    assert out(booted, "kernel-diff") == []
    assert out(booted, "accounts-diff") == []
    changed = [line for line in out(booted, "files-diff", status=None)
               if line[:2] in ("< ", "> ")
               and not line[2:].startswith(PACKAGE_MANAGER_PATHS)]
    assert changed == [], changed
