"""A fleet on one machine: schedcpd "hosts", each on its own bus, state and cgroup namespace.

One bundle deploys on every host of a fleet, so its selectors must find each
host's *own* processes.  On one machine every daemon sees every process;
what tells them apart here is the cgroup namespace: each host's daemon runs
in a cgroup namespace rooted at the host's cgroup (cgroup v2), where its
application's processes are in ``/fleet-app``.  In ``/proc/PID/cgroup`` the
daemon reads ``/fleet-app`` for its own application and
``/../<other host>/fleet-app`` for the others', so the policy's selector
``cgroup = "/fleet-app"`` matches exactly the processes of the host it runs
on, as it would on separate machines.  Nothing else about the daemon
changes: it uses the machine's /proc, the same kernel and its own bus.

:class:`Fleet` also writes the Ansible inventory (local connection, a bus
address per host) and runs the schedcp.fleet rollout playbook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from tests.deploy.conftest import FAST, QUICK
from tests.harness import (
    ROOT,
    PrivateBus,
    Procs,
    SchedcpdProcess,
    call,
    ctl_ok,
    wait_for,
    wait_until,
)

COLLECTIONS = ROOT / "ansible" / "collections"
PLAYBOOK = COLLECTIONS / "ansible_collections" / "schedcp" / "fleet" / "playbooks" / "rollout.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
APP = "fleet-app"
"""The application's cgroup on every host, as the host's daemon sees it."""


def cgroup2_mount() -> Path:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or ``.../unified``)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    raise RuntimeError("no cgroup v2 hierarchy is mounted: the fleet test needs one")


class HostDaemon(SchedcpdProcess):
    """schedcpd started inside a cgroup namespace rooted at ``cgroup``."""

    def __init__(self, address: str, config_text: str, cgroup: Path) -> None:
        super().__init__(address, config_text)
        self.cgroup = cgroup

    def argv(self) -> list[str]:
        """Join the host's cgroup, unshare the cgroup namespace, exec the daemon."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec unshare --cgroup "$@"',
                str(self.cgroup), *super().argv()]


class Host:
    """One host of the fleet: its bus, daemon, trusted keys and cgroup."""

    def __init__(self, name: str, cgroup: Path, stack: ExitStack, windows: str = FAST) -> None:
        self.name = name
        self.cgroup = cgroup
        (cgroup / APP).mkdir(parents=True)
        (cgroup / "other").mkdir()
        self.bus = stack.enter_context(PrivateBus())
        self.trusted = Path(tempfile.mkdtemp(prefix=f"schedcp-{name}-keys-"))
        stack.callback(shutil.rmtree, self.trusted, True)
        config = windows.replace("[verifier]\n",
                              f'[verifier]\ntrusted_keys_dir = "{self.trusted}"\n')
        self.daemon = HostDaemon(self.bus.address, config, cgroup)
        stack.callback(self.daemon.__exit__, None, None, None)
        self.procs = Procs(new_session=False)
        stack.callback(self.procs.stop)

    @property
    def address(self) -> str:
        """The host's bus address (what the inventory gives Ansible)."""
        return self.bus.address

    def start(self, argv: list[str], where: str = APP) -> subprocess.Popen[bytes]:
        """A process of this host, in its application's cgroup (or ``other``)."""
        proc = self.procs.start(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                                 str(self.cgroup / where), *argv])
        wait_until(lambda: str(proc.pid) in (self.cgroup / where / "cgroup.procs").read_text()
                   .split(), 10, f"{argv[0]} in {self.name}'s {where}")
        return proc

    def kill(self, pid: int) -> None:
        """Kill (and reap) the process ``pid`` that :meth:`start` started."""
        [proc] = [p for p in self.procs.procs if p.pid == pid]
        proc.kill()
        proc.wait(timeout=10)

    def stop_processes(self) -> None:
        """Kill what :meth:`start` started."""
        self.procs.stop()

    def deployments(self) -> list[dict[str, Any]]:
        """This host's deployments over its bus, newest first."""
        return list(json.loads(call(self.address, "ListDeployments")))

    def roll_back_all(self) -> None:
        """Roll back whatever deployment of this host is not over (running or active)."""
        for dep in self.deployments():
            if dep["state"] not in ("reverted", "failed"):
                call(self.address, "Rollback", "s", dep["id"])


class Fleet:
    """A verifier daemon and ``n`` hosts that trust its key; all torn down by ``close``.

    The hosts named in ``judged`` deploy through windows the breaker judges
    (FAST); the others through QUICK ones (tests/deploy/conftest.py), too short
    for it to judge: they go active in about a second, and the host's load
    cannot trip them.
    """

    def __init__(self, names: list[str], judged: frozenset[str] | None = None) -> None:
        self.stack = ExitStack()
        self.root = cgroup2_mount() / f"schedcp-fleet-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root.mkdir()
        self.stack.callback(self._remove_cgroups)
        self.dir = Path(tempfile.mkdtemp(prefix="schedcp-fleet-"))
        self.stack.callback(shutil.rmtree, self.dir, True)
        try:
            verifier_bus = self.stack.enter_context(PrivateBus())
            self.verifier = self.stack.enter_context(
                SchedcpdProcess(verifier_bus.address, FAST))
            judged = frozenset(names) if judged is None else judged
            self.hosts = {name: Host(name, self.root / name, self.stack,
                                     FAST if name in judged else QUICK) for name in names}
            for host in self.hosts.values():
                host.daemon.start(wait=False)
            for host in self.hosts.values():
                wait_for(host.daemon.owns_name, 60, f"schedcpd of {host.name}",
                         host.daemon.proc, host.daemon.log)
            # Trust: the verifier's public key goes to every host's trusted-keys.d.
            key = self.dir / "verifier.pub"
            ctl_ok(self.verifier.address, "keys", "export", "-o", str(key))
            for host in self.hosts.values():
                shutil.copy(key, host.trusted / "verifier.pub")
        except BaseException:
            self.close()
            raise

    def bundle(self, policy: str, name: str) -> Path:
        """Submit ``policy`` to the verifier and export its verified, signed bundle."""
        policy_id = call(self.verifier.address, "SubmitPolicy", "s", policy)
        out = self.dir / f"{name}.bundle"
        ctl_ok(self.verifier.address, "bundle", "export", policy_id, "-o", str(out))
        return out

    def inventory(self) -> Path:
        """The Ansible inventory: group ``schedcp``, local connection, a bus per host."""
        hosts = {name: {"ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "schedcp_bus_address": host.address}
                 for name, host in self.hosts.items()}
        path = self.dir / "inventory.yml"
        path.write_text(json.dumps({"schedcp": {"hosts": hosts}}, indent=1))  # JSON is YAML
        return path

    def rollout(self, bundle: Path, waves: list[int | str] | None = None,
                timeout: float = 240) -> tuple[int, dict[str, Any], str]:
        """Run the rollout playbook; its exit status, JSON report and stderr."""
        assert ANSIBLE_PLAYBOOK.exists(), \
            f"{ANSIBLE_PLAYBOOK} is missing: ./scripts/bootstrap installs the [fleet] extra"
        extra: dict[str, Any] = {"schedcp_bundle": str(bundle), "schedcp_deploy_timeout": 120}
        if waves is not None:
            extra["schedcp_waves"] = waves
        home = self.dir / "ansible-home"
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
               "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
               "ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).parent / "callback_plugins"),
               "ANSIBLE_STDOUT_CALLBACK": "fleet_record", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_RETRY_FILES_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
        out = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory()), str(PLAYBOOK),
                              "-e", json.dumps(extra)], capture_output=True, text=True,
                             env=env, cwd=self.dir, timeout=timeout)
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"ansible-playbook printed no JSON (exit {out.returncode}):\n"
                                 f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}") from None
        return out.returncode, report, out.stderr

    def close(self) -> None:
        """Stop every host's processes and daemon, the buses; remove the cgroups."""
        for host in getattr(self, "hosts", {}).values():
            host.stop_processes()
        self.stack.close()

    def _remove_cgroups(self) -> None:
        def empty(path: Path) -> bool:
            return not (path / "cgroup.procs").read_text().strip()

        for path in sorted(self.root.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            wait_until(partial(empty, path), 10, f"{path} empty")
            path.rmdir()
