"""A dvfs policy through the real daemon over D-Bus, on the FAKE cpufreq tree.

The daemon's dvfs plugin is pointed at a FAKE sysfs root
(``[plugins.dvfs] sysfs_cpu``; this machine has no cpufreq driver): submit,
verify, deploy (canary, breaker), roll back; then the daemon SIGKILLed in a
dvfs write and restarted: its start-up restores the tree from the journal.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.deploy.conftest import FAST, forced_token
from tests.dvfs import fake_sysfs
from tests.harness import call, calls_as, wait_deployment

TEXT = ('[policy]\nname = "dvfs-dbus"\nsubsystem = "dvfs"\ndescription = "dvfs test"\n\n'
        '[[cpufreq]]\ncpus = "all"\ngovernor = "performance"\nmax_khz = 3000000\n\n'
        '[boost]\nenabled = false\n')


def config(root: Path, extra: str = "") -> str:
    return FAST + extra + f'[plugins.dvfs]\nsysfs_cpu = "{root}"\n'


@pytest.mark.slow
def test_dvfs_policy_verified_deployed_and_rolled_back_over_dbus(
        start_daemon, fake_root: Path) -> None:
    before = fake_sysfs.snapshot(fake_root)
    proc = start_daemon(config(fake_root))
    caps = json.loads(call(proc.address, "GetStatus"))["subsystems"]["dvfs"]["capabilities"]
    assert caps["cpufreq.governor"]["available"] and caps["cpufreq.boost"]["available"]
    assert not caps["uclamp.task"]["available"] or caps["uclamp.task"]["reason"] == ""
    policy_id = call(proc.address, "SubmitPolicy", "s", TEXT)
    assert json.loads(call(proc.address, "GetPolicy", "s", policy_id))["subsystem"] == "dvfs"
    token, report_text = call(proc.address, "VerifyPolicy", "s", policy_id)
    report = json.loads(report_text)
    assert token and report["passed"], json.dumps(report["stages"], indent=1)
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"}, timeout=60)
    assert info["state"] == "active", info["events"]
    live = fake_sysfs.snapshot(fake_root)
    assert live["cpufreq/policy0/scaling_governor"] == "performance"
    assert live["cpufreq/policy2/scaling_max_freq"] == "3000000"
    assert live["cpufreq/boost"] == "0"
    result = json.loads(call(proc.address, "Rollback", "s", dep))
    assert result["state"] == "reverted"
    assert fake_sysfs.snapshot(fake_root) == before


@pytest.mark.slow
@pytest.mark.parametrize("point", ["dvfs_after_journal_commit:3", "dvfs_after_write:3"])
def test_daemon_killed_inside_a_dvfs_write_restores_at_restart(
        point: str, start_daemon, fake_root: Path, tmp_path: Path) -> None:
    before = fake_sysfs.snapshot(fake_root)
    state = tmp_path / "state"
    first = start_daemon(config(fake_root, "[debug]\nfault_injection = true\n"),
                         state_dir=state, env={"SCHEDCP_FAULT": point})
    policy_id = call(first.address, "SubmitPolicy", "s", TEXT)
    token = forced_token(state, first.address, policy_id)
    calls_as(0, first.address, [["Deploy", "s", [token]]])
    assert first.proc.wait(60) == -signal.SIGKILL, first.log_text()
    assert f"fault injection: SIGKILL at {point.split(':')[0]}" in first.log_text()
    assert fake_sysfs.snapshot(fake_root) != before  # the first writes stayed

    second = start_daemon(config(fake_root), address=first.address, state_dir=state)
    assert fake_sysfs.snapshot(fake_root) == before
    [dep] = json.loads(call(second.address, "ListDeployments"))
    assert json.loads(call(second.address, "GetDeployment", "s", dep["id"]))["state"] \
        == "reverted"
