"""Shared fixtures: a private system-like bus, schedcpd, test users, this build's .deb.

Helpers: tests/harness.py.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from plugins.scheduler.microvm import FetchError, MicroVM
from schedcpd import __version__
from schedcpd.journal import Journal
from tests.harness import ROOT, STATE_ROOT, PrivateBus, SchedcpdProcess, remove_client_probe

TEST_GROUP = "schedcp"
_LANE_MARKS = {"microvm": "tcg", "packaging": "packaging"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/microvm is ``tcg``, every one under tests/packaging ``packaging``.

    The two mark the guest lane of ./scripts/test (README): the tests that
    boot qemu guests or share the micro-VM cache, and the package tests,
    which move that cache aside while they install and purge the .deb.
    """
    here = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(here).parts if item.path.is_relative_to(here) else ()
        if parts and parts[0] in _LANE_MARKS:
            item.add_marker(_LANE_MARKS[parts[0]])

TEST_USER = "schedcp-test"


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run stopped with SIGTERM (``timeout``, a cancelled CI job) tears its fixtures down.

    Python's default for SIGTERM is to die on the spot: the daemons, buses and
    workers the fixtures started kept running, their directories stayed in
    /tmp.  As KeyboardInterrupt, pytest stops the test and finalizes every
    fixture; a second SIGTERM (during that) ends the run at once.
    """
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt(f"signal {signum}: stopping, fixtures are torn down")


@pytest.fixture(scope="session", autouse=True)
def _client_probe_removed() -> Iterator[None]:
    """harness.client_probe()'s copy goes with the session that made it."""
    yield
    remove_client_probe()


@pytest.fixture(scope="session")
def private_bus() -> Iterator[PrivateBus]:
    """One private system-like dbus-daemon for the session."""
    with PrivateBus() as bus:
        yield bus


@pytest.fixture
def fresh_bus() -> Iterator[PrivateBus]:
    """A private bus of the test's own (for tests that add services to it)."""
    with PrivateBus() as bus:
        yield bus


@pytest.fixture(scope="module")
def daemon(private_bus: PrivateBus) -> Iterator[SchedcpdProcess]:
    """schedcpd with default settings (metrics on a free port) on the session bus."""
    with SchedcpdProcess(private_bus.address) as proc:
        yield proc


@pytest.fixture
def start_daemon(fresh_bus: PrivateBus) -> Iterator[Any]:
    """Factory for daemons with a custom config; all are stopped at the end."""
    started: list[SchedcpdProcess] = []

    def start(config_text: str = "[metrics]\nenabled = false\n", address: str | None = None,
              wait: bool = True, **kwargs: Any) -> SchedcpdProcess:
        proc = SchedcpdProcess(address or fresh_bus.address, config_text, **kwargs)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.__exit__(None, None, None)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """A real journal in the test's tmp_path (on tmpfs where the directory makes it so)."""
    j = Journal(tmp_path / "journal.db")
    try:
        yield j
    finally:
        j.close()


@pytest.fixture
def daemon_state() -> Iterator[Path]:
    """A state directory for daemons a test restarts on it (on tmpfs: harness.STATE_ROOT)."""
    root = Path(tempfile.mkdtemp(prefix="schedcpd-test-state-", dir=STATE_ROOT))
    yield root / "state"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def memory_path() -> Iterator[Path]:
    """A fresh directory on tmpfs (harness.STATE_ROOT), removed after the test.

    For SQLite databases (``synchronous=FULL``): on a busy disk each commit's
    fsync costs up to a second; directories whose tests keep databases make
    it their ``tmp_path`` (tests/core, tests/policy, tests/scheduler).
    """
    path = Path(tempfile.mkdtemp(prefix="schedcp-test-", dir=STATE_ROOT))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def readable_path() -> Iterator[Path]:
    """A fresh directory every user may read (0755), removed after the test.

    Third-party plugins run out of process as ``nobody`` (docs/plugins.md):
    a test's plugin site, and any file its plugins look at, must be readable
    by that user, which ``tmp_path`` (root's alone) is not.
    """
    path = Path(tempfile.mkdtemp(prefix="schedcp-site-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


_USERS_LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else tempfile.gettempdir()) \
    / "schedcp-test-users.lock"


@pytest.fixture(scope="session")
def test_users() -> Iterator[dict[str, int]]:
    """uids of a member of group ``schedcp`` and of ``nobody``; made and removed here.

    Several test sessions may run at once on one machine: each holds a shared
    lock on :data:`_USERS_LOCK` while it uses the accounts, and the last one
    out (the only one that gets the lock exclusively) removes what a test
    session made.  Marker files say which accounts tests made, so accounts
    that existed before (a real group ``schedcp``) are never removed.
    """
    markers = {TEST_GROUP: _USERS_LOCK.with_suffix(".group"),
               TEST_USER: _USERS_LOCK.with_suffix(".user")}
    with _USERS_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            grp.getgrnam(TEST_GROUP)
        except KeyError:
            markers[TEST_GROUP].touch()
            subprocess.run(["groupadd", "--system", "-f", TEST_GROUP], check=True)
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            markers[TEST_USER].touch()
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", TEST_USER], check=False)
        if TEST_USER not in grp.getgrnam(TEST_GROUP).gr_mem:
            subprocess.run(["gpasswd", "--add", TEST_USER, TEST_GROUP], check=True,
                           capture_output=True)
        try:
            yield {"member": pwd.getpwnam(TEST_USER).pw_uid,
                   "nobody": pwd.getpwnam("nobody").pw_uid, "root": 0}
        finally:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another session still uses the accounts; it removes them
            else:
                for name, command in ((TEST_USER, "userdel"), (TEST_GROUP, "groupdel")):
                    if markers[name].exists():
                        subprocess.run([command, name], check=False, capture_output=True)
                        markers[name].unlink()


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This build's .deb, built once per session (or ``$SCHEDCP_DEB``, one built before).

    The package tests and the systemd guest tests all install it: one
    packaging/build-deb (a minute or two) serves them all.
    """
    if os.environ.get("SCHEDCP_DEB"):
        return Path(os.environ["SCHEDCP_DEB"])
    out_dir = tmp_path_factory.mktemp("deb")
    out = subprocess.run([str(ROOT / "packaging" / "build-deb"), str(out_dir)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    deb = Path(out.stdout.strip().splitlines()[-1])
    assert deb.is_file() and deb.name == f"schedcp_{__version__}_amd64.deb", deb
    return deb


PREVIOUS_SUFFIX = "~prev1"


@pytest.fixture(scope="session")
def previous_deb(built_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """"The previous build": ``built_deb`` repacked with its version lowered to ``<version>~prev1``.

    What an upgrade exercises is dpkg's and the maintainer scripts' handling
    of an installed (and, under systemd, running) package, which does not
    depend on the code differing: the same files, a lower version.
    """
    dest = tmp_path_factory.mktemp("previous")
    tree = dest / "tree"
    out = subprocess.run(["dpkg-deb", "-R", str(built_deb), str(tree)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    control = tree / "DEBIAN" / "control"
    version = __version__ + PREVIOUS_SUFFIX
    text = control.read_text()
    assert f"\nVersion: {__version__}\n" in text, text
    control.write_text(text.replace(f"\nVersion: {__version__}\n", f"\nVersion: {version}\n"))
    built = dest / f"schedcp_{version}_amd64.deb"
    # gzip -1: this copy only has to install, not to be small.
    out = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree),
                          str(built)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    shutil.rmtree(tree)
    return built


@pytest.fixture(scope="session")
def vm() -> MicroVM:
    """The micro-VM, prepared once per session (tests/microvm, tests/systemd_guest).

    The first run on a machine downloads the guest kernel and build tools
    and builds everything (cached in $SCHEDCP_MICROVM_CACHE, default
    /var/cache/schedcp/microvm); later runs reuse the cache.  The tests skip,
    with the reason, only when that download fails (no network); a build
    failure is a test failure.
    """
    try:
        return MicroVM().prepare()
    except FetchError as err:
        pytest.skip(f"cannot download the sched_ext guest kernel or tools: {err}")
