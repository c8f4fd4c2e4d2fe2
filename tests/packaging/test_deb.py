"""Build the Debian package, lint it, install it, run it, purge it.

One build per session (packaging/build-deb into a temporary directory).  The
installed daemon runs on a private system-like bus whose policy directory is
the INSTALLED /usr/share/dbus-1/system.d, with the real polkitd on the same
bus reading the installed polkit actions; there is no systemd as PID 1 here,
so the test starts /usr/bin/schedcpd the way the unit would (its capability
bounding set, no_new_privs).  Every test purges the package in ``finally``
and checks the machine is left as it was: files, state, accounts.

The micro-VM cache /var/cache/schedcp, which purge removes, may already hold
tests/microvm's downloads: the tests move it aside and put it back.

Accounts: tests/conftest.py's ``test_users`` fixture may have made group
``schedcp`` before these tests run.  The package records the accounts it
created and purge removes only those, so each test compares the accounts
before install and after purge, whichever existed first.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from schedcpd import __version__
from schedcpd.const import ACTION_OBSERVE, ACTIONS, BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from tests.conftest import PREVIOUS_SUFFIX
from tests.harness import ROOT, PrivateBus, run_as, wait_for, wait_until
from tests.packaging.conftest import SYSTEMD_DIR, unit_capabilities

# test_users: the accounts tests/conftest.py makes stay until the last test
# session using them ends (./scripts/test runs two at once), so a host-lane
# session ending cannot delete group schedcp while the package is installed.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.usefixtures("test_users")]

if os.geteuid() != 0:
    pytest.skip("installing a package needs root", allow_module_level=True)

PACKAGE = "schedcp"
VENV = Path("/usr/lib/schedcp/venv")
STATE = Path("/var/lib/schedcp")
RECORD = STATE / ".package-created-accounts"
POLKITD = Path("/usr/lib/polkit-1/polkitd")
NOBODY = 65534
ACCOUNTS = ("group:schedcp", "passwd:schedcp-agent", "group:schedcp-agent")
UNIT = SYSTEMD_DIR / "schedcpd.service"
SEARCHED = ("/etc", "/var/lib", "/var/cache", "/run", "/usr/bin", "/usr/sbin", "/usr/lib",
            "/usr/share", "/lib")
SCX = Path("/usr/lib/schedcp/scx")
ALL_ACTION = "org.schedcp.all"
MUTATING = [a for a in ACTIONS if a != ACTION_OBSERVE]
POLKIT_RULE = Path("/etc/polkit-1/rules.d") / f"49-schedcp-test-{os.getpid()}.rules"
CACHE = Path("/var/cache/schedcp")
PEER, PROPS = "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.Properties"


def _run(argv: list[str], timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def package_state() -> str:
    """dpkg's status of the package ('' when dpkg never heard of it)."""
    out = _run(["dpkg-query", "-W", "-f=${Status}", PACKAGE])
    return out.stdout.strip() if out.returncode == 0 else ""


def accounts() -> dict[str, bool]:
    """Which of the package's accounts exist now."""
    return {a: _run(["getent", *a.split(":")]).returncode == 0 for a in ACCOUNTS}


def schedcp_paths() -> set[str]:
    """Every path named *schedcp* in the system directories a package touches."""
    out = _run(["find", *SEARCHED, "-xdev", "-name", "*schedcp*"])
    return set(out.stdout.split())


def install(deb: Path) -> None:
    """dpkg -i; the maintainer scripts must cope with systemd not being PID 1."""
    out = _run(["dpkg", "-i", str(deb)], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert out.returncode == 0, out.stdout + out.stderr


def purge() -> None:
    """dpkg --purge, when anything of the package is on the machine."""
    if package_state() and "not-installed" not in package_state():
        out = _run(["dpkg", "--purge", PACKAGE])
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def deb(request: pytest.FixtureRequest) -> Path:
    """The session's .deb (tests/conftest.py ``built_deb``), unless the package is installed."""
    state = package_state()
    if state and "not-installed" not in state:
        pytest.skip(f"{PACKAGE} is already on this machine ({state}); these tests would purge it")
    built: Path = request.getfixturevalue("built_deb")
    return built


@pytest.fixture(scope="module")
def lintian(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """lintian over the .deb, started once it is built; a function giving (status, output).

    It reads only the .deb, so it runs while the install tests do (it takes
    a minute and more of one CPU) and test_lintian_is_clean, last in this
    module, collects its verdict.
    """
    out = tmp_path_factory.mktemp("lintian") / "out"
    with out.open("w") as sink:
        proc = subprocess.Popen(["lintian", "--pedantic", "--display-info",
                                 "--fail-on", "error,warning,info,pedantic", str(deb)],
                                stdout=sink, stderr=subprocess.STDOUT)

    def verdict() -> tuple[int, str]:
        return proc.wait(timeout=600), out.read_text()

    try:
        yield verdict
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the installed files ----------------------------------------------------


def check_installed_files() -> None:
    for exe in ("schedcpd", "schedcpctl", "schedcp-agent", "schedcp-mcp"):
        link = Path("/usr/bin") / exe
        assert link.is_symlink() and link.resolve() == VENV / "bin" / exe
        assert (VENV / "bin" / exe).read_text().splitlines()[0] == f"#!{VENV}/bin/python"
    # schedcp-bench is not shipped (docs/packaging.md): no half-working command.
    assert not (VENV / "bin" / "schedcp-bench").exists()
    assert not Path("/usr/bin/schedcp-bench").exists()
    # Nor the MCP SDK's developer command (its [cli] extra is not bundled).
    assert not (VENV / "bin" / "mcp").exists()
    # The bundled venv alone: no environment, no pip, nothing from the build tree.
    out = _run(["/usr/bin/schedcpd", "--version"], env={})
    assert out.returncode == 0 and out.stdout.strip() == f"schedcpd {__version__}", out
    out = _run([str(VENV / "bin" / "python"), "-c",
                "import importlib.util, sys; import dbus_fast.message, anthropic, "
                "cryptography.hazmat.bindings._rust, pyroute2, schedcpd.daemon, "
                "schedcp_agent.cli, schedcp_agent.tune, optuna, schedcp_mcp.server, "
                "schedcp_mcp.http; "
                "print(importlib.util.find_spec('pip'), sys.prefix)"], env={})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", str(VENV)]
    for path in [*(VENV / "bin").iterdir(), VENV / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            assert "debian/schedcp" not in path.read_text(errors="replace"), path
    out = run_as(NOBODY, ["/usr/bin/schedcpctl", "--help"])
    assert out.returncode == 0, out.stderr
    out = run_as(NOBODY, ["/usr/bin/schedcp-mcp", "--help"])
    assert out.returncode == 0 and "MCP" in out.stdout, out.stderr

    conffiles = _run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout
    assert "/etc/schedcp/schedcpd.toml" in conffiles
    same = {
        "/etc/schedcp/schedcpd.toml": "etc/schedcpd.toml",
        f"/usr/share/dbus-1/system.d/{BUS_NAME}.conf": f"etc/dbus-1/system.d/{BUS_NAME}.conf",
        f"/usr/share/dbus-1/system-services/{BUS_NAME}.service":
            f"etc/dbus-1/system-services/{BUS_NAME}.service",
        f"/usr/share/dbus-1/interfaces/{MANAGER_INTERFACE}.xml":
            f"etc/dbus-1/interfaces/{MANAGER_INTERFACE}.xml",
        "/usr/share/polkit-1/actions/org.schedcp.policy": "etc/polkit-1/actions/org.schedcp.policy",
        "/lib/systemd/system/schedcpd.service": "systemd/schedcpd.service",
        "/lib/systemd/system/schedcp-agent.service": "systemd/schedcp-agent.service",
        "/usr/lib/sysusers.d/schedcp.conf": "systemd/sysusers.d/schedcp.conf",
        "/usr/lib/tmpfiles.d/schedcp.conf": "systemd/tmpfiles.d/schedcp.conf",
    }
    for installed, source in same.items():
        assert Path(installed).read_bytes() == (ROOT / source).read_bytes(), installed
    installed_policies = Path("/usr/share/schedcp/policies")
    assert sorted(str(p.relative_to(installed_policies)) for p in installed_policies.rglob("*")
                  if p.is_file()) == \
        sorted(str(p.relative_to(ROOT / "policies")) for p in (ROOT / "policies").rglob("*.toml"))
    assert sorted(p.name for p in Path("/usr/lib/schedcp/bpf").iterdir()) == \
        ["cswitch.bpf.o", "offcpu.bpf.o", "runqlat.bpf.o"]
    # The sched_ext sources the micro-VM builds (and T2 policies name), and
    # the installed code finds them there, from no checkout.
    sources = sorted(str(p.relative_to(ROOT / "bpf" / "scx"))
                     for p in (ROOT / "bpf" / "scx").rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(SCX)) for p in SCX.rglob("*") if p.is_file()) == sources
    for name in sources:
        assert (SCX / name).read_bytes() == (ROOT / "bpf" / "scx" / name).read_bytes(), name
    out = _run([str(VENV / "bin" / "python"), "-c",
                "from plugins.scheduler.microvm import paths; print(paths.scx_source_dir())"],
               env={}, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == str(SCX), out
    assert Path("/etc/schedcp/policies.d").is_dir()
    assert STATE.is_dir() and STATE.stat().st_mode & 0o777 == 0o700

    # deb-systemd-helper recorded the enablement although systemd is not PID 1.
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    assert os.readlink(wants / "schedcpd.service") == "/lib/systemd/system/schedcpd.service"
    assert not (wants / "schedcp-agent.service").exists()
    # With the real binary in place, verify needs no stand-ins.
    out = _run(["systemd-analyze", "verify", "--man=no", "/lib/systemd/system/schedcpd.service"])
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr

    groups = _run(["id", "-nG", "schedcp-agent"]).stdout.split()
    assert "schedcp" in groups
    assert _run(["getent", "passwd", "schedcp-agent"]).stdout.strip().endswith(":/usr/sbin/nologin")


# -- the installed daemon on a private system-like bus ------------------------


def busctl(address: str, uid: int, method: str) -> subprocess.CompletedProcess[str]:
    """busctl call as ``uid``; JSON output."""
    return run_as(uid, ["busctl", f"--address={address}", "--json=short", "call", BUS_NAME,
                        OBJECT_PATH, MANAGER_INTERFACE, method])


def dbus_send(address: str, uid: int, method: str) -> subprocess.CompletedProcess[str]:
    """dbus-send as ``uid`` (it prints the D-Bus error name, busctl does not)."""
    return run_as(uid, ["dbus-send", f"--bus={address}", "--print-reply", f"--dest={BUS_NAME}",
                        OBJECT_PATH, f"{MANAGER_INTERFACE}.{method}"])


def status_of(reply: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert reply.returncode == 0, reply.stderr
    status: dict[str, Any] = json.loads(json.loads(reply.stdout)["data"][0])
    return status


def _owned(address: str, name: str) -> bool:
    return _run(["busctl", f"--address={address}", "status", name]).returncode == 0


@pytest.fixture
def polkit_bus(tmp_path: Path) -> Iterator[PrivateBus]:
    """A private bus with the installed bus policies and the real polkitd on it."""
    if not POLKITD.exists():
        pytest.skip("polkitd is not installed (requirements-apt.txt lists it)")
    with PrivateBus(Path("/usr/share/dbus-1/system.d")) as bus:
        log = tmp_path / "polkitd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(POLKITD), "--no-debug"], stdout=out, stderr=out,
                                    env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address})
        try:
            wait_for(lambda: _owned(bus.address, "org.freedesktop.PolicyKit1"), 30, "polkitd", proc,
                     log)
            yield bus
        finally:
            proc.terminate()
            proc.wait(10)


def check_polkit_actions(address: str) -> None:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address}
    out = _run(["pkaction", "--verbose", "--action-id", "org.schedcp.all"], env=env)
    assert out.returncode == 0, out.stderr
    assert re.search(r"org\.freedesktop\.policykit\.imply -> org\.schedcp\.observe "
                     r"org\.schedcp\.submit org\.schedcp\.verify org\.schedcp\.deploy "
                     r"org\.schedcp\.admin", out.stdout), out.stdout

    assert pkcheck(address, NOBODY, ACTION_OBSERVE).returncode == 0
    for action in [*MUTATING, ALL_ACTION]:
        denied = pkcheck(address, NOBODY, action)
        assert denied.returncode != 0 and "requires authentication" in denied.stderr, action

    # "implies" works: a rule granting nobody org.schedcp.all alone authorizes
    # every other action.
    with grant_all(address, "nobody", NOBODY):
        for action in MUTATING:
            assert pkcheck(address, NOBODY, action).returncode == 0, action


def pkcheck(address: str, uid: int, action: str) -> subprocess.CompletedProcess[str]:
    """pkcheck for a process of ``uid``, against the polkitd on ``address``."""
    return run_as(uid, ["sh", "-c", f"exec pkcheck --action-id {action} --process $$"],
                  env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address})


@contextmanager
def grant_all(address: str, user: str, uid: int) -> Iterator[None]:
    """A polkit rule giving ``user`` org.schedcp.all (the one the policy file suggests)."""
    POLKIT_RULE.write_text(
        "polkit.addRule(function(action, subject) {\n"
        f'    if (action.id == "{ALL_ACTION}" && subject.user == "{user}")\n'
        "        return polkit.Result.YES;\n"
        "});\n")
    try:
        # polkitd reloads rules.d by itself.
        _poll(lambda: pkcheck(address, uid, "org.schedcp.admin").returncode == 0,
              "the rule granting all")
        yield
    finally:
        POLKIT_RULE.unlink(missing_ok=True)
    _poll(lambda: pkcheck(address, uid, "org.schedcp.admin").returncode != 0, "the rule's removal")


def _poll(predicate: Any, what: str) -> None:
    wait_until(predicate, 60, f"polkitd picks up {what}", interval=0.5)


def check_bus_policy(address: str) -> None:
    """The installed bus policy: anyone may call the standard interfaces, only root owns."""
    for uid in (0, NOBODY):
        bus = ["busctl", f"--address={address}"]
        out = run_as(uid, [*bus, "introspect", BUS_NAME, OBJECT_PATH])
        assert out.returncode == 0 and MANAGER_INTERFACE in out.stdout, out.stderr
        out = run_as(uid, [*bus, "call", BUS_NAME, OBJECT_PATH, PEER, "Ping"])
        assert out.returncode == 0, out.stderr
        out = run_as(uid, [*bus, "--json=short", "call", BUS_NAME, OBJECT_PATH, PROPS, "GetAll",
                           "s", MANAGER_INTERFACE])
        assert out.returncode == 0 and '"Version"' in out.stdout, out.stderr
    # An interface the policy does not list is refused by the bus itself.
    send = ["dbus-send", f"--bus={address}", "--print-reply"]
    out = run_as(NOBODY, [*send, f"--dest={BUS_NAME}", OBJECT_PATH, "org.example.Nope.GetStatus"])
    assert "org.freedesktop.DBus.Error.AccessDenied" in out.stderr, out
    # Owning the name: refused to nobody by the policy; root may (schedcpd holds it: EXISTS).
    request = [*send, "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus.RequestName", f"string:{BUS_NAME}", "uint32:4"]
    out = run_as(NOBODY, request)
    assert out.returncode != 0 and "org.freedesktop.DBus.Error.AccessDenied" in out.stderr, out
    out = run_as(0, request)
    assert out.returncode == 0 and out.stdout.split()[-2:] == ["uint32", "3"], out


def check_installed_agent(address: str, mdwe: bool) -> None:
    """The installed agent as its own user, with no capabilities, as the unit runs it."""
    agent = pwd.getpwnam("schedcp-agent")
    # The unit's ExecStart with an empty $SCHEDCP_AGENT_ARGS: exit 2, which the
    # unit's RestartPreventExitStatus= keeps from restarting in a loop.
    out = run_as(agent.pw_uid, ["/usr/bin/schedcp-agent", "watch", "--bus", address])
    assert out.returncode == 2 and "give the targets" in out.stderr, out
    target = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "sleep", "300"])

    def watch() -> subprocess.CompletedProcess[str]:
        return _run(["setpriv", "--reuid=schedcp-agent", "--regid=schedcp-agent",
                     "--init-groups", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
                     "/usr/bin/schedcp-agent", "watch", "--bus", address,
                     "--pid", str(target.pid), "--duration", "3", "--poll", "1", "--json",
                     # No trigger can fire (whatever the load of this machine): watch only.
                     "--psi-threshold", "101", "--heavy-cpu", "1000"],
                    env={"PATH": "/usr/bin:/bin"}, cwd="/",
                    preexec_fn=_deny_write_execute if mdwe else None, timeout=120)

    try:
        out = watch()  # observing needs no grant (org.schedcp.observe: yes)
    finally:
        target.kill()
        target.wait()
    # It resolved another user's process and read the daemon's summary for it.
    assert out.returncode == 0, out
    assert f"watching pid {target.pid} and descendants" in out.stderr, out.stderr
    assert "summary failed" not in out.stderr, out.stderr
    assert json.loads(out.stdout) == {"actions": []}


PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
CAP_NUMBERS = {"dac_override": 1, "net_admin": 12, "sys_ptrace": 19, "sys_nice": 23,
               "perfmon": 38, "bpf": 39}


def _deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes, the kernel's way (inherited across execve)."""
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError("PR_SET_MDWE failed")


def run_installed_daemon(bus: PrivateBus, tmp_path: Path) -> None:
    """Start /usr/bin/schedcpd as the unit would, call it as root and nobody, stop it.

    As the unit would: its capability bounding set, no_new_privs, and (where
    the kernel has PR_SET_MDWE, Linux >= 6.3) no writable+executable memory.
    """
    mdwe = ctypes.CDLL(None).prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0
    config = tmp_path / "schedcpd.toml"
    # The installed conffile, with the exporter on a free port (9638 may be taken).
    text = Path("/etc/schedcp/schedcpd.toml").read_text()
    assert "# port = 9638" in text
    config.write_text(text.replace("# port = 9638", "port = 0"))
    caps = "".join(f",+{c}" for c in sorted(unit_capabilities(UNIT)))
    log = tmp_path / "schedcpd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["setpriv", f"--bounding-set=-all{caps}", "--inh-caps=-all", "--no-new-privs",
             "/usr/bin/schedcpd", "--config", str(config), "--bus", bus.address,
             "--state-dir", str(STATE)],
            stdout=out, stderr=out, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            preexec_fn=_deny_write_execute if mdwe else None,
        )
    try:
        wait_for(lambda: _owned(bus.address, BUS_NAME), 30, "schedcpd", proc, log)
        fields = dict(line.split(":\t", 1) for line in
                      Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ":\t" in line)
        wanted = sum(1 << CAP_NUMBERS[c] for c in unit_capabilities(UNIT))
        assert int(fields["CapEff"], 16) == wanted and int(fields["CapBnd"], 16) == wanted
        assert fields["NoNewPrivs"].strip() == "1"
        root = status_of(busctl(bus.address, 0, "GetStatus"))
        assert root["caller"]["uid"] == 0
        assert root["authorization"] == "polkit"
        assert root["state_dir"] == str(STATE)
        # Every built-in is in the repository, the T2 schedulers of t2/ too.
        assert root["policy_files"]["rejected"] == {}, root["policy_files"]
        listed = run_as(0, ["busctl", f"--address={bus.address}", "--json=short", "call",
                            BUS_NAME, OBJECT_PATH, MANAGER_INTERFACE, "ListPolicies", "s", ""])
        assert listed.returncode == 0, listed.stderr
        tracks = {p["name"]: p["track"]
                  for p in json.loads(json.loads(listed.stdout)["data"][0])}
        builtins = {p.stem for p in (ROOT / "policies").rglob("*.toml")}
        assert set(tracks) == builtins, tracks
        assert {tracks[p.stem] for p in (ROOT / "policies" / "t2").glob("*.toml")} == {"T2"}
        nobody = status_of(busctl(bus.address, NOBODY, "GetStatus"))
        assert nobody["caller"]["uid"] == NOBODY
        check_bus_policy(bus.address)
        check_installed_agent(bus.address, mdwe)

        denied = busctl(bus.address, NOBODY, "Reload")
        assert denied.returncode != 0 and "not authorized" in denied.stderr
        denied = dbus_send(bus.address, NOBODY, "Reload")
        assert "org.schedcp.Control1.Error.AccessDenied" in denied.stderr, denied
        assert busctl(bus.address, 0, "Reload").returncode == 0

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (STATE / "schedcpd.db").exists()
    # Byte-code shipped for everything imported: the run wrote nothing to /usr.
    check_nothing_unowned()


def check_nothing_unowned() -> None:
    """Every path under /usr/lib/schedcp belongs to the installed package."""
    owned = set(_run(["dpkg-query", "-L", PACKAGE]).stdout.split())
    unowned = set(_run(["find", "/usr/lib/schedcp"]).stdout.split()) - owned
    assert not unowned, sorted(unowned)[:10]


# -- the tests ------------------------------------------------------------------


@pytest.fixture
def cache_aside() -> Iterator[None]:
    """Move a micro-VM cache this machine already has (tests/microvm) out of purge's way."""
    aside = CACHE.parent / f".schedcp-test-aside-{os.getpid()}"
    moved = CACHE.exists()
    if moved:
        CACHE.rename(aside)
    try:
        yield
    finally:
        if moved:
            # Something may have made a new one meanwhile (a micro-VM test run
            # beside this one): the one put aside holds the downloads and
            # builds, so it wins; a few MB made meanwhile are cheap to redo.
            if CACHE.exists():
                shutil.rmtree(CACHE)
            aside.rename(CACHE)


@pytest.mark.usefixtures("lintian")  # started first: it runs beside the install
def test_install_run_purge(deb: Path, polkit_bus: PrivateBus, tmp_path: Path,
                           cache_aside: None) -> None:
    before_accounts, before_paths = accounts(), schedcp_paths()
    try:
        install(deb)
        made = sorted(a for a, existed in before_accounts.items() if not existed)
        assert sorted(RECORD.read_text().split()) == made
        check_installed_files()
        # An administrator turns the agent on; purge must take that link away too.
        out = _run(["systemctl", "enable", "schedcp-agent.service"])
        assert out.returncode == 0, out.stderr
        check_polkit_actions(polkit_bus.address)
        run_installed_daemon(polkit_bus, tmp_path)
        # The micro-VM cache (CacheDirectory=), made where the installed code puts it.
        out = _run([str(VENV / "bin" / "python"), "-c",
                    "from plugins.scheduler.microvm import paths; print(paths.cache_dir())"],
                   env={}, cwd="/")
        assert out.returncode == 0 and out.stdout.strip() == str(CACHE / "microvm"), out
        purge()
        assert package_state() == ""
        assert accounts() == before_accounts
        assert schedcp_paths() == before_paths
    finally:
        purge()


def test_upgrade_then_purge_keeps_what_the_package_did_not_make(
        deb: Path, previous_deb: Path, cache_aside: None) -> None:
    """The previous build, then this one over it (dpkg -i), then purge.

    The upgrade keeps the administrator's edited configuration (a conffile),
    the state directory (the policy repository, keys and journal live there)
    and the record of the accounts the first install made, and leaves no
    file of the old version behind.  Purge then removes only what the
    package made: group schedcp made before it (by an admin, or by
    tests/conftest.py) stays.  Without systemd as PID 1 the maintainer
    scripts' restart of a running service is a no-op here; the systemd guest
    checks it (SCHEDCP_GUEST_UPGRADE=1, docs/packaging.md).
    """
    made_group = not accounts()["group:schedcp"]
    if made_group:
        subprocess.run(["groupadd", "--system", "schedcp"], check=True)
    conf, kept = Path("/etc/schedcp/schedcpd.toml"), STATE / "kept-across-upgrade"
    try:
        before = accounts()
        install(previous_deb)
        assert _run(["dpkg-query", "-W", "-f=${Version}", PACKAGE]).stdout == \
            __version__ + PREVIOUS_SUFFIX
        record = RECORD.read_text()
        assert "group:schedcp" not in record.split()
        edited = conf.read_text() + "\n# an administrator's change\n"
        conf.write_text(edited)
        kept.write_text("what the daemon keeps in its state directory\n")
        install(deb)
        assert _run(["dpkg-query", "-W", "-f=${Version}", PACKAGE]).stdout == __version__
        assert conf.read_text() == edited
        assert not conf.with_name(conf.name + ".dpkg-dist").exists()
        assert kept.exists() and RECORD.read_text() == record
        out = _run(["/usr/bin/schedcpd", "--version"], env={})
        assert out.returncode == 0 and out.stdout.strip() == f"schedcpd {__version__}", out
        check_nothing_unowned()
        purge()
        assert accounts() == before
        assert not STATE.exists() and not conf.exists()
    finally:
        purge()
        if made_group:
            subprocess.run(["groupdel", "schedcp"], check=False)


def test_lintian_is_clean(lintian: Any) -> None:
    """No tag at any level but those overridden (each with a reason) in debian/."""
    status, output = lintian()
    tags = [line for line in output.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert status == 0 and not tags, output
