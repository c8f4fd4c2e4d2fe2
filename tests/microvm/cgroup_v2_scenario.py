"""Run inside the guest host: T1 policies with cgroup groups on cgroup v2, through D-Bus.

    python /run/job/cgroup_v2_scenario.py [STEP ...]

Shipped by tests/microvm/test_cgroup_v2_guest.py with the policies, the
tokens the host's daemon issued, its public key and schedcpd's
configuration (all in /run/job); the D-Bus client and the workload helpers
come from t2_guest_scenario.py beside it.  The guest's /init mounts cgroup2
(unified, the only hierarchy there).  Steps: ``weights`` (cpu.weight and
cpu.idle groups, deployed then rolled back), ``confine`` (cpuset.cpus and
cpu.max, deployed, then schedcpd killed with SIGKILL and started again: its
start-up restores from the journal), ``uclamp`` (the dvfs plugin's task and
cgroup utilisation clamps, in this process: the host cannot sign them).
Each step prints ``RESULT <step> <json>`` with what the kernel showed
before, while active and after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from t2_guest_scenario import JOB, Client, main, read, report, spawn, stop

CGROUP = Path("/sys/fs/cgroup")


def cgroup_of(pid: int) -> str:
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "<none>"


def kernel_state(pids: dict[str, int]) -> dict[str, Any]:
    """What the kernel shows: the root's subtree_control, every top-level group, the targets."""
    groups = {}
    for path in sorted(CGROUP.iterdir()):
        if path.is_dir() and path.name.startswith("schedcp."):
            groups[path.name] = {name: read(path / name) for name in (
                "cpu.weight", "cpu.idle", "cpu.max", "cpuset.cpus", "cpuset.cpus.effective",
                "cgroup.procs")}
    targets = {name: {"pid": pid, "cgroup": cgroup_of(pid),
                      "affinity": sorted(os.sched_getaffinity(pid)),
                      "policy": os.sched_getscheduler(pid)}
               for name, pid in pids.items()}
    return {"subtree_control": read(CGROUP / "cgroup.subtree_control"),
            "controllers": read(CGROUP / "cgroup.controllers"),
            "groups": groups, "targets": targets}


async def deploy(client: Client, name: str) -> tuple[str, dict[str, Any]]:
    await client.ok("SubmitPolicy", "s", (JOB / f"{name}.toml").read_text())
    dep = await client.ok("Deploy", "s", (JOB / f"{name}.token").read_text().strip())
    info = await client.wait(dep, lambda i: i["state"] == "active", timeout=120)
    return dep, info


async def weights(client: Client) -> None:
    """cpu.weight (shares 4096) and cpu.idle groups: active, then rolled back."""
    # Both CPU-bound: the breaker guards them as throughput (build) and donor (idle).
    pids = {"build": spawn("v2-build", 0, 0.05), "idle": spawn("v2-idle", 0, 0.05),
            "other": spawn("v2-other", 0.01, 0.002)}
    before = kernel_state(pids)
    dep, info = await deploy(client, "weights")
    active = kernel_state(pids)
    rollback = await client.call("Rollback", "s", dep)
    after = kernel_state(pids)
    final = await client.deployment(dep)
    stop(list(pids.values()))
    report("weights", {"dep": dep, "before": before, "active": active, "after": after,
                       "info": info, "rollback": rollback, "final": final})


def schedcpd_pids() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and "bin/schedcpd" in read(proc / "cmdline").replace("\0", " "):
            found.append(int(proc.name))
    return found


async def confine(client: Client) -> None:
    """cpuset.cpus + cpu.max; schedcpd killed (SIGKILL) while active, started again."""
    pids = {"noisy": spawn("v2-noisy", 0, 0.05), "other": spawn("v2-other", 0.01, 0.002)}
    before = kernel_state(pids)
    dep, info = await deploy(client, "confine")
    active = kernel_state(pids)
    client.close()
    killed = schedcpd_pids()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while schedcpd_pids() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    after_kill = kernel_state(pids)
    log = open("/run/schedcpd-restart.log", "w")  # the daemon keeps it open
    daemon = subprocess.Popen(["schedcpd", "--bus", "system", "--config",
                               str(JOB / "schedcpd.toml")], stdout=log, stderr=log,
                              stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    ready = False
    while daemon.poll() is None and time.monotonic() < deadline:
        if subprocess.run(["busctl", "--system", "status", "org.schedcp.Control1"],
                          capture_output=True).returncode == 0:
            ready = True
            break
        await asyncio.sleep(0.2)
    after_restart = kernel_state(pids)
    await client.connect()
    final = await client.deployment(dep) if ready else {}
    # This daemon is ours, not /init's: stop it (its stop restores nothing more).
    daemon.send_signal(signal.SIGTERM)
    status = daemon.wait(timeout=60)
    stop(list(pids.values()))
    report("confine", {"dep": dep, "before": before, "active": active, "killed": killed,
                       "after_kill": after_kill, "ready": ready,
                       "after_restart": after_restart, "final": final, "info": info,
                       "restart_status": status,
                       "restart_log": read("/run/schedcpd-restart.log").splitlines()[-30:]})


async def uclamp_step(client: Client) -> None:
    """The dvfs plugin in this process on the guest kernel (CONFIG_UCLAMP_TASK=y).

    Not through D-Bus: the host's verifier (no uclamp there) refuses a clamp
    policy by name, so no token can be signed for it.  A task group (every
    thread of a spawned process) and a cgroup of our own get clamps, are
    read back from the kernel (sched_getattr, cpu.uclamp.*), restored; an
    administrator's change is left alone; bad input is refused by name.
    """
    import tempfile

    from plugins.dvfs import uclamp as uc
    from plugins.dvfs.plugin import DvfsPlugin
    from schedcpd.plugin_api import Journal, PluginContext, SchedcpError

    pid = spawn("uc-ui", 0.01, 0.002)
    cg = CGROUP / "schedcp-uclamp-test"
    subtree = read(CGROUP / "cgroup.subtree_control")
    state = Path(tempfile.mkdtemp())
    journal = Journal(state / "journal.db")
    plugin = DvfsPlugin()
    out: dict[str, Any] = {"subtree_before": subtree}
    try:
        if "cpu" not in subtree.split():
            (CGROUP / "cgroup.subtree_control").write_text("+cpu")
        cg.mkdir()
        plugin.schedcp_startup(PluginContext(state_dir=state, journal=journal))
        out["caps"] = plugin.schedcp_describe()["capabilities"]

        def snap() -> dict[str, Any]:
            return {"task": {str(t): list(uc.get(t)) for t in uc.threads(pid)},
                    "cg": {n: read(cg / n) for n in uc.CGROUP_FILES}}

        tasks = {"group": [{"name": "ui", "match": {"pids": [pid]},
                            "uclamp": {"min": 512, "max": 900}}]}
        cgroups = {"cgroup": [{"path": cg.name, "uclamp_min": 25, "uclamp_max": 75.5}]}
        out["before"] = snap()
        out["validate"] = plugin.schedcp_validate("dvfs", {**tasks, **cgroups})
        out["static"] = plugin.schedcp_static_check("dvfs", tasks, [])
        out["dynamic"] = plugin.schedcp_dynamic_check("dvfs", tasks, 1.0)
        for name, doc in (("tasks", tasks), ("cgroups", cgroups)):
            try:
                plugin.schedcp_apply("dvfs", doc, {"owner": name}, False)
                out[f"{name}_active"] = snap()
                out[f"{name}_journal"] = [[e.key, e.prior, e.new, e.state]
                                          for e in journal.entries(owner=name)]
            except SchedcpError as err:
                out[f"{name}_error"] = f"{type(err).__name__}: {err}"
        out["restore"] = plugin.schedcp_restore("dvfs", {})
        out["after"] = snap()
        # An administrator changes a thread's clamp after us: left alone at restore.
        plugin.schedcp_apply("dvfs", tasks, {"owner": "override"}, False)
        uc.set_(pid, 100, 800)
        out["override_restore"] = plugin.schedcp_restore("dvfs", {"owner": "override"})
        out["after_override"] = snap()
        uc.set_(pid, 0, 800)  # a ceiling below the floor the next policy asks for
        try:
            plugin.schedcp_apply("dvfs", {"group": [{"name": "x", "match": {"pids": [pid]},
                                                     "uclamp": {"min": 1000}}]},
                                 {"owner": "bad"}, False)
            out["bad"] = "applied"
        except SchedcpError as err:
            out["bad"] = f"{type(err).__name__}: {err}"
        out["bad_journal"] = len(journal.entries(owner="bad"))
        out["bad_left"] = snap()
        uc.set_(pid, uc.RESET, uc.RESET)
        out["final"] = snap()
        # An entry the old plugin wrote itself (no target), open at an upgrade:
        # the new plugin hands it to the core, whose restore puts the clamp back.
        uc.set_(pid, 300, 700)
        old = journal.record("legacy", "uclamp", f"uclamp:{pid}:{uc.start_time(pid)}",
                             [0, 1024], [300, 700], subsystem="dvfs")
        journal.mark_applied(old)
        plugin.schedcp_shutdown()
        plugin = DvfsPlugin()
        plugin.schedcp_startup(PluginContext(state_dir=state, journal=journal))
        out["legacy_restore"] = plugin.schedcp_restore("dvfs", {})
        out["legacy_after"] = snap()
    finally:
        plugin.schedcp_shutdown()
        journal.close()
        stop([pid])
        if cg.exists():
            cg.rmdir()
        if "cpu" not in subtree.split():
            (CGROUP / "cgroup.subtree_control").write_text("-cpu")
        out["subtree_after"] = read(CGROUP / "cgroup.subtree_control")
    report("uclamp", out)


STEPS: dict[str, Callable[..., Awaitable[Any]]] = {
    "weights": weights, "confine": confine, "uclamp": uclamp_step}


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:] or list(STEPS), STEPS)))
