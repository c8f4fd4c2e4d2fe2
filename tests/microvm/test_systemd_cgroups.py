"""cgroup v2 the systemd way, for real: the installed package under systemd as PID 1.

One boot of the systemd guest (plugins/scheduler/microvm/systemd_guest.py:
Debian 12, systemd 252 as PID 1, cgroup v2 unified) installs this build's
.deb with apt (systemd starts schedcpd.service), points the daemon at the
host daemon's key and short deployment windows, and runs
tests/microvm/systemd_cgroup_scenario.py with the installed venv's Python.
Targets are transient services started with ``systemd-run``; the policies'
cgroup knobs must become properties of those units (never a cgroup of ours,
never a moved process), come back exactly, survive ``systemctl stop`` of a
target's unit, refuse a unit shared with another process, and be restored
by the restart after ``systemctl kill -s KILL schedcpd``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler.microvm import FetchError, MicroVM, guest
from plugins.scheduler.microvm import systemd_guest as sg
from tests.harness import PrivateBus, SchedcpdProcess
from tests.microvm.test_cgroup_v2_guest import CONFINE, WEIGHTS
from tests.microvm.test_t2_guest import SCHED_BATCH, SCHED_EXT, SCHED_OTHER, VTIME, _call, policies

pytestmark = [pytest.mark.slow, pytest.mark.tcg, pytest.mark.systemd_guest,
              pytest.mark.timeout(2400)]

HERE = Path(__file__).resolve().parent
MIXED = """[policy]
name = "v2-mixed"
description = "a weighted target whose unit also runs a shell (refused under systemd)"
track = "T1"

[[group]]
name = "mixed"
match = { comm = ["v2-mixed"] }
descendants = false
cgroup = { shares = 2048 }
"""
VENV_PYTHON = "/usr/lib/schedcp/venv/bin/python"
JOB = f""". /usr/local/lib/schedcp-guest/lib.sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
cd /run/job && run install apt-get install -y ./schedcp_*.deb
cd /tmp
CONF=/etc/schedcp/schedcpd.toml
add() {{ sed -i "/^\\[$1\\]\\$/a $2" "$CONF"; }}
add bus 'call_timeout_seconds = 400'
add verifier 'trusted_keys_dir = "/run/job/keys"'
add verifier 'dynamic_seconds = 1.0'
add deployer 'baseline_seconds = 2.0'
add deployer 'canary_seconds = 4.0'
add deployer 'full_seconds = 3.0'
add metrics 'enabled = false'
# T2 as a user with a filled micro-VM cache has it: the loader and the object
# the host's verifier loaded (found by its digest, as the token binds it).
cat >> "$CONF" <<'END'
[plugins.scheduler]
scx_loader = "/run/job/scx_loader"
scx_object_dir = "/run/job/verified"
scx_verified_objects = "/run/job/verified"
END
run config sh -c "grep -v '^#' $CONF | grep -v '^\\$'"
run restart systemctl restart schedcpd.service
run backend sh -c 'systemctl is-active schedcpd.service;
    journalctl -b -u schedcpd.service -o cat --no-pager | grep "cgroup knobs"'
run scenario {VENV_PYTHON} /run/job/systemd_cgroup_scenario.py $(cat /run/job/steps)
run journal sh -c 'journalctl -b -u schedcpd.service -o cat --no-pager | tail -n 60'
"""


@pytest.fixture(scope="module")
def systemd_guest() -> sg.SystemdGuest:
    try:
        return sg.SystemdGuest().prepare()
    except FetchError as err:
        pytest.skip(f"cannot download the guest kernel or the Debian packages: {err}")


@pytest.fixture(scope="module")
def verified(vm: MicroVM) -> Iterator[dict[str, Any]]:
    """The host's daemon verifies the policies (weights twice: a token is used once).

    vtime (T2) is verified in the micro-VM; the job brings the loader and
    the object that verification loaded.
    """
    config = "[metrics]\nenabled = false\n[bus]\ncall_timeout_seconds = 400\n" \
             "[verifier]\ndynamic_seconds = 1.0\n"
    with PrivateBus() as bus, SchedcpdProcess(bus.address, config) as proc:
        out: dict[str, Any] = {}
        for name, text in (("weights", WEIGHTS), ("weights2", WEIGHTS), ("confine", CONFINE),
                           ("mixed", MIXED), ("vtime", VTIME)):
            policy_id = _call(bus.address, "SubmitPolicy", "s", text)
            token, report = _call(bus.address, "VerifyPolicy", "s", policy_id, timeout=420)
            assert token, report[:4000]
            out[name] = token
        keys = sorted((proc.state_dir / "keys").glob("*.pub"))
        assert len(keys) == 1, keys
        out["key"] = (keys[0].name, keys[0].read_bytes())
        assert vm.artifacts is not None
        vtime = vm.artifacts.objects["vtime"].read_bytes()
        out[f"verified/{hashlib.sha256(vtime).hexdigest()}.bpf.o"] = vtime
        out["scx_loader"] = Path(vm.artifacts.binaries["scx_loader"])
        yield out


@pytest.fixture(scope="module")
def scenario(systemd_guest: sg.SystemdGuest, built_deb: Path, verified: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    files: dict[str, Path | bytes] = {
        built_deb.name: built_deb,
        "systemd_cgroup_scenario.py": HERE / "systemd_cgroup_scenario.py",
        "t2_guest_scenario.py": HERE / "t2_guest_scenario.py",
        "weights.toml": WEIGHTS.encode(), "confine.toml": CONFINE.encode(),
        "mixed.toml": MIXED.encode(), "vtime.toml": VTIME.encode(),
        **{f"{name}.token": verified[name].encode()
           for name in ("weights", "weights2", "confine", "mixed", "vtime")},
        **{k: v for k, v in verified.items() if k.startswith("verified/")},
        "scx_loader": verified["scx_loader"],
        f"keys/{verified['key'][0]}": verified["key"][1],
    }
    # SCHEDCP_GUEST_STEPS="good crash" runs only those steps (diagnosis).
    files["steps"] = os.environ.get("SCHEDCP_GUEST_STEPS", "").encode()
    result = systemd_guest.run(JOB, files, timeout=1800)
    # The whole report, for diagnosis (the schedcpd journal is in "journal").
    (tmp_path_factory.getbasetemp() / "systemd-cgroups.json").write_text(
        json.dumps(dataclasses.asdict(result), indent=1))
    error = sg.problem(result)
    steps: dict[str, Any] = {"_result": result, "_summary": sg.summary(result)}
    print("systemd guest:", json.dumps(steps["_summary"]))  # the figures, with -rP
    for line in result.output.get("scenario", []):
        if line.startswith(("step ", "RESULT ")):
            print(line[:6000])  # what the guest saw, for people reading -rP
    assert error is None, f"{error}\n" + "\n".join(result.console_tail[-30:])
    for line in result.output.get("scenario", []):
        if line.startswith("RESULT "):
            _, name, data = line.split(" ", 2)
            steps[name] = json.loads(data)
    return steps


def step(scenario: dict[str, Any], name: str) -> dict[str, Any]:
    result: guest.GuestResult = scenario["_result"]
    assert name in scenario, "\n".join(result.output.get("scenario", [])[-40:]
                                       + result.output.get("journal", [])[-60:])
    data: dict[str, Any] = scenario[name]
    assert "exception" not in data, (data["exception"], result.output.get("journal", [])[-60:])
    return data


def test_the_installed_daemon_chose_the_systemd_backend(scenario: dict[str, Any]) -> None:
    result: guest.GuestResult = scenario["_result"]
    lines = result.output.get("backend", [])
    assert lines and lines[0] == "active", lines
    assert any("systemd backend" in line for line in lines), lines


def test_weights_are_unit_properties_and_every_target_stays_in_its_unit(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "weights")
    assert data["info"]["state"] == "active", data["info"]["events"]
    build, idle = data["active"]["build"], data["active"]["idle"]
    assert build["props"]["CPUWeight"] == "157" and build["files"]["cpu.weight"] == "157", build
    assert idle["props"]["CPUWeight"] == "idle" and idle["files"]["cpu.idle"] == "1", idle
    for name, unit in (("build", "schedcp-t-build.service"), ("idle", "schedcp-t-idle.service")):
        state = data["active"][name]
        assert state["pid_cgroup"] == f"0::/system.slice/{unit}", state
        assert state["pid_cgroup"] == data["before"][name]["pid_cgroup"]
        assert any(unit in line for line in data["cgls"]), data["cgls"]
    assert data["ours"] == [], data["ours"]


def test_rollback_gives_the_units_their_settings_back(scenario: dict[str, Any]) -> None:
    data = step(scenario, "weights")
    assert data["final"]["state"] == "reverted", data["final"]["events"]
    for name in ("build", "idle"):
        before, after = data["before"][name], data["after"][name]
        assert after["props"] == before["props"], (before, after)
        assert after["files"] == before["files"], (before, after)


def test_systemctl_kill_then_the_restart_restores(scenario: dict[str, Any]) -> None:
    data = step(scenario, "crash")
    assert data["active"]["build"]["CPUWeight"] == "157", data
    assert data["main_after"] != data["main_before"], data
    assert data["after"] == data["before"], (data["before"], data["after"])


def test_cpuset_and_quota_and_systemctl_stop_still_stops_the_target(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "confine")
    active = data["active"]
    assert active["props"]["AllowedCPUs"] == "1", active
    assert active["props"]["CPUQuotaPerSecUSec"] == "800ms", active
    assert active["files"]["cpuset.cpus"] == "1" and active["files"]["cpu.max"] == "80000 100000"
    assert data["affinity"] == [1]
    assert active["pid_cgroup"] == "0::/system.slice/schedcp-t-noisy.service"
    assert not data["after_stop"]["alive"], data["after_stop"]
    assert data["rollback"].get("ok") is not None, data["rollback"]
    # The stopped (and collected) unit is gone, not "changed by someone else".
    assert data["final"]["overridden"] == [], data["final"]["overridden"]


def test_a_unit_shared_with_another_process_is_refused_by_name(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "mixed")
    text = json.dumps([data["deploy"], data["info"]])
    assert "schedcp-t-mixed.service" in text and "whole" in text, text
    assert data["after"]["props"] == data["before"]["props"], data
    assert data["after"]["pid_cgroup"] == data["before"]["pid_cgroup"]


def test_the_guest_verifier_runs_its_sandbox_in_transient_scopes(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "sandbox")
    assert data["journal"], data
    codes = {f["code"] for stage in data["verdict"]["report"]["stages"]
             for f in stage.get("findings", [])}
    assert "sandbox-failed" not in codes and "no-scratch-cgroup" not in codes, codes
    assert data["ours"] == []
    # The run's scopes went with their processes, and its slices were stopped:
    # nothing of the sandbox stays in systemd's tree (apt purge checks this too).
    assert data["units_left"] == [] and data["cgroups_left"] == [], data


def test_a_t2_scheduler_runs_under_the_hardened_unit_and_rolls_back(
        scenario: dict[str, Any]) -> None:
    """The package's schedcpd.service, as shipped, starts the sched_ext loader.

    Its capabilities (no CAP_SYS_ADMIN), seccomp filter and
    MemoryDenyWriteExecute all apply to the loader it forks; the deployment
    goes canary (the targets only, partial switch) -> widened -> active,
    and the rollback gives every task its class back.
    """
    data = step(scenario, "good")
    canary = data["canary"]
    assert canary["state"] == "enabled" and canary["ops"] == "schedcp_vtime", canary
    assert policies(canary, "probe") == {SCHED_EXT} and policies(canary, "other") == {SCHED_OTHER}
    assert data["active"]["state"] == "active", data["active"]["events"]
    assert data["widened"]["switch_all"] == "1", data["widened"]
    after = data["after"]
    assert after["state"] == "disabled" and after["loaders"] == [] and after["in_ext"] == []
    assert policies(after, "probe") == {SCHED_OTHER} and policies(after, "batch") == {SCHED_BATCH}
    assert data["deployment"]["state"] == "reverted"
