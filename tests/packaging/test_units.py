"""The systemd units, sysusers/tmpfiles files, D-Bus activation and polkit actions.

Checked with the real tools: systemd-analyze (verify, security),
systemd-sysusers and systemd-tmpfiles on a temporary root, xmllint against
polkit's DTD.  The installed package is checked again in test_deb.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from schedcp_agent.cli import EXIT_DENIED, EXIT_USAGE
from schedcpd.const import ACTION_OBSERVE, ACTIONS, BUS_NAME
from schedcpd.daemon import EXIT_CONFIG, EXIT_NAME_TAKEN
from tests.harness import ROOT
from tests.packaging.conftest import SYSTEMD_DIR, UNITS, ini, unit_values

MAX_EXPOSURE = {"schedcpd.service": 4.0, "schedcp-agent.service": 2.0}
POLKIT_DTD = Path("/usr/share/polkit-1/policyconfig-1.dtd")
POLICY = ROOT / "etc" / "polkit-1" / "actions" / "org.schedcp.policy"
ACTIVATION = ROOT / "etc" / "dbus-1" / "system-services" / f"{BUS_NAME}.service"


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60)


def test_units_pass_systemd_analyze_verify(unit_root: Path) -> None:
    out = _verify(unit_root, *UNITS)
    assert out.returncode == 0, out.stderr
    # verify only warns (exit 0) about unknown keys or bad values: fail on any output.
    assert out.stderr.strip() == "" and out.stdout.strip() == "", out.stderr


def test_verify_reports_a_broken_unit(unit_root: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    unit = unit_root / "usr" / "lib" / "systemd" / "system" / "schedcpd.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    out = _verify(unit_root, "schedcpd.service")
    assert "ProtectHomes" in out.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure(unit: str) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(SYSTEMD_DIR / unit)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    exposure = float(match.group(1))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE[unit]


def test_schedcpd_unit_choices() -> None:
    """The decisions docs/packaging.md explains are the ones in the unit."""
    unit = SYSTEMD_DIR / "schedcpd.service"
    assert unit_values(unit, "Type") == ["notify"]
    assert unit_values(unit, "BusName") == [BUS_NAME]
    assert unit_values(unit, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    # Bad configuration, or the bus name taken by another schedcpd: not restarted.
    assert unit_values(unit, "RestartPreventExitStatus") == [f"{EXIT_CONFIG} {EXIT_NAME_TAKEN}"]
    # Writes /proc/sys/kernel/sched_* and /sys/fs/cgroup; sets SCHED_FIFO/RR.
    for key in ("ProtectKernelTunables", "ProtectControlGroups", "RestrictRealtime"):
        assert unit_values(unit, key) == ["no"], key
    assert unit_values(unit, "ProtectSystem") == ["strict"]
    assert "CAP_SYS_ADMIN" not in " ".join(unit_values(unit, "CapabilityBoundingSet"))
    # Daemons that rewrite the same knobs or hold the one sched_ext slot.
    conflicts = set(" ".join(unit_values(unit, "Conflicts")).split())
    assert {"ananicy-cpp.service", "system76-scheduler.service", "scx_loader.service"} <= conflicts
    syscalls = " ".join(unit_values(unit, "SystemCallFilter")).split()
    assert {"bpf", "perf_event_open", "@system-service"} <= set(syscalls)
    for key, value in (("Restart", "on-failure"), ("WatchdogSec", "30s"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("StateDirectory", "schedcp"), ("RuntimeDirectory", "schedcp"),
                       ("CacheDirectory", "schedcp")):
        assert unit_values(unit, key) == [value], key
    agent = SYSTEMD_DIR / "schedcp-agent.service"
    assert unit_values(agent, "CapabilityBoundingSet") == [""]
    assert unit_values(agent, "User") == ["schedcp-agent"]
    assert "schedcpd.service" in unit_values(agent, "After")[0].split()


def test_agent_unit_can_see_and_reach_its_scope() -> None:
    """The agent reads other users' /proc/<pid> and takes its scope from agent.env."""
    agent = SYSTEMD_DIR / "schedcp-agent.service"
    # "invisible"/"noaccess"/"ptraceable" would hide every process it may be asked to tune.
    assert unit_values(agent, "ProtectProc") == ["default"]
    assert unit_values(agent, "ExecStart")[0].endswith(" $SCHEDCP_AGENT_ARGS")
    assert unit_values(agent, "EnvironmentFile") == ["-/etc/schedcp/agent.env"]
    # No scope (exit 2) or refused by schedcpd (4): restarting cannot help.
    assert unit_values(agent, "RestartPreventExitStatus") == [f"{EXIT_USAGE} {EXIT_DENIED}"]


def test_seccomp_sets_allow_what_the_daemon_calls() -> None:
    """The syscalls schedcpd needs are in the sets the unit allows."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", "@system-service"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    listed = set(re.findall(r"^\s+([a-z0-9_]+)\s*$", out, re.M))
    for group in re.findall(r"^\s+(@[a-z-]+)\s*$", out, re.M):
        sub = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        listed |= set(re.findall(r"^\s+([a-z0-9_]+)\s*$", sub, re.M))
    needed = {"sched_setattr", "sched_setscheduler", "sched_setaffinity", "setpriority",
              "prctl", "socket", "sendmsg", "recvmsg", "clone", "execve"}
    assert needed <= listed, needed - listed
    # Not in @system-service, hence named explicitly in the unit.
    assert "bpf" not in listed and "perf_event_open" not in listed


def test_sysusers_file_creates_the_accounts(tmp_path: Path) -> None:
    """systemd-sysusers on a temporary root: group schedcp, user schedcp-agent in it."""
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                    str(SYSTEMD_DIR / "sysusers.d" / "schedcp.conf")],
                   check=True, capture_output=True, timeout=60)
    groups = {line.split(":")[0]: line.split(":")[3].split(",")
              for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    users = {line.split(":")[0]: line.split(":")
             for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    assert "schedcp-agent" in groups["schedcp"]
    assert "schedcp-agent" in groups
    assert users["schedcp-agent"][6] == "/usr/sbin/nologin"


def test_tmpfiles_file_creates_the_state_dir(tmp_path: Path) -> None:
    subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                    str(SYSTEMD_DIR / "tmpfiles.d" / "schedcp.conf")],
                   check=True, capture_output=True, timeout=60)
    state = tmp_path / "var" / "lib" / "schedcp"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700


def test_dbus_activation_goes_through_systemd() -> None:
    service = ini(ACTIVATION)["D-BUS Service"]
    assert service["Name"] == BUS_NAME
    assert service["SystemdService"] == "schedcpd.service"
    assert service["Exec"] == "/bin/false"
    assert service["User"] == "root"


def test_polkit_actions() -> None:
    if shutil.which("xmllint") and POLKIT_DTD.exists():
        subprocess.run(
            ["xmllint", "--noout", "--nonet", "--dtdvalid", str(POLKIT_DTD), str(POLICY)],
            check=True, timeout=60,
        )
    actions = {a.get("id"): a for a in ET.parse(POLICY).getroot().iter("action")}
    assert set(actions) == {*ACTIONS, "org.schedcp.all"}
    for action_id, action in actions.items():
        found = action.find("defaults")
        assert found is not None, action_id
        defaults = {d.tag: d.text for d in found}
        expected = "yes" if action_id == ACTION_OBSERVE else "auth_admin_keep"
        assert defaults == dict.fromkeys(("allow_any", "allow_inactive", "allow_active"),
                                         expected), action_id
    implies = {a.get("key"): (a.text or "").split()
               for a in actions["org.schedcp.all"].iter("annotate")}
    assert sorted(implies["org.freedesktop.policykit.imply"]) == sorted(ACTIONS)
