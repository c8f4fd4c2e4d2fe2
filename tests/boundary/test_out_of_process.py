"""A third-party plugin runs as nobody in a child process; only the core writes.

Real processes, a real setpriv, a real journal; the kernel files are a FAKE
tree (root-owned plain files in a world-readable temporary directory) plus
one real, root-owned procfs file the plugin tries to write itself.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedcpd.hookspecs import PluginContext
from schedcpd.journal import Journal
from schedcpd.knobs import KnobNotDeclared, KnobValueRefused
from schedcpd.plugin_remote import RemotePlugin
from schedcpd.plugins import PluginHost
from tests.conftest import TEST_USER

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="drops root to nobody: needs root")


@pytest.fixture
def outside_module(readable_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """outside_plugin.py where nobody can import it: a checkout may be root's alone.

    (A CI clone in a 0700 mkdtemp directory is: there the child could not
    import ``tests.boundary.outside_plugin`` at all.)  The directory joins
    sys.path, which the host hands to the child as its PYTHONPATH.
    """
    shutil.copy(Path(__file__).with_name("outside_plugin.py"),
                readable_path / "schedcp_outside_plugin.py")
    (readable_path / "schedcp_outside_plugin.py").chmod(0o644)
    monkeypatch.syspath_prepend(str(readable_path))
    return "schedcp_outside_plugin"


@pytest.fixture
def host(fake: Path, journal: Journal, tmp_path: Path,
         outside_module: str) -> Iterator[tuple[PluginHost, list]]:
    failures: list[tuple[str, str]] = []
    h = PluginHost(builtins={"good": "tests.core.sample_plugins.good"},
                   third_party={"outside": outside_module},
                   load_entry_points=False, on_failure=lambda n, m: failures.append((n, m)))
    h.startup(lambda name: PluginContext(state_dir=tmp_path / name, journal=journal,
                                         config={"fake_root": str(fake)}))
    try:
        yield h, failures
    finally:
        h.shutdown()


def _child(h: PluginHost) -> RemotePlugin:
    plugin = h.pm.get_plugin("outside")
    assert isinstance(plugin, RemotePlugin)
    return plugin


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _apply(h: PluginHost, owner: str, policy: dict) -> dict:
    result = h.call_first("schedcp_apply", subsystem="outside", policy=policy,
                          scope={"owner": owner}, dry_run=False)
    assert isinstance(result, dict)
    return result


def test_the_child_runs_as_nobody_without_capabilities(host: tuple[PluginHost, list]) -> None:
    h, _ = host
    child = _child(h)
    status = _status(child.proc.pid)
    assert status["Uid"].split() == ["65534"] * 4
    assert status["Gid"].split() == ["65534"] * 4
    assert status["Groups"] == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == "1"
    assert child.uid == 65534 and child.pid == child.proc.pid
    assert "out of process, as nobody" in h.records["outside"].origin


def test_a_declared_change_is_written_journaled_and_restored_by_the_core(
        host: tuple[PluginHost, list], fake: Path, journal: Journal) -> None:
    h, failures = host
    path = fake / "block/sda/queue/read_ahead_kb"
    result = _apply(h, "d1", {"changes": [{"knob": "fake_ra", "target": str(path),
                                           "value": 4096, "key": "ra:sda"}]})
    assert result["uid"] == 65534  # decided in the child ...
    assert [c["status"] for c in result["changes"]] == ["applied"]
    assert path.read_text().strip() == "4096"  # ... written by the core
    (entry,) = journal.entries(owner="d1")
    assert (entry.subsystem, entry.kind, entry.key, entry.prior, entry.new, entry.state,
            entry.target) == ("outside", "fake_ra", "ra:sda", "128", "4096", "applied",
                              str(path))
    report = h.call_first("schedcp_restore", subsystem="outside", scope={"owner": "d1"})
    assert report["summary"] == {"restored": 1}
    assert path.read_text().strip() == "128"
    assert journal.entries(owner="d1")[0].state == "restored"
    assert failures == [] and h.records["outside"].enabled


def test_an_inherited_value_is_adopted_by_the_core_over_the_channel(
        host: tuple[PluginHost, list], fake: Path, journal: Journal) -> None:
    h, failures = host
    path = fake / "block/sdb/queue/read_ahead_kb"
    change = {"knob": "fake_ra", "target": str(path), "value": 128, "key": "ra:sdb",
              "meta": {"prior": 64}}
    result = _apply(h, "d7", {"adopt": [change, {**change, "value": 256}]})
    (entry,) = journal.entries(owner="d7")  # only the change whose live value is its own
    assert result["entries"] == [entry.id] and result["uid"] == 65534
    assert (entry.state, entry.prior, entry.new, entry.target) == ("applied", "64", "128",
                                                                   str(path))
    h.call_first("schedcp_restore", subsystem="outside", scope={"owner": "d7"})
    assert path.read_text().strip() == "64"
    assert failures == []


@pytest.mark.parametrize("target", ["kernel/sched_autogroup_enabled", str(AUTOGROUP),
                                    "block/sda/queue/../../../kernel/sched_autogroup_enabled"])
def test_a_change_outside_the_declarations_is_refused_and_nothing_written(
        host: tuple[PluginHost, list], fake: Path, journal: Journal, target: str) -> None:
    h, failures = host
    before = {p: p.read_text() for p in (fake / "kernel/sched_autogroup_enabled",
                                         fake / "block/sda/queue/read_ahead_kb", AUTOGROUP)}
    path = target if target.startswith("/") else str(fake / target)
    good = {"knob": "fake_ra", "target": str(fake / "block/sda/queue/read_ahead_kb"),
            "value": 512}
    with pytest.raises(KnobNotDeclared, match="is not a file of knob 'fake_ra'"):
        _apply(h, "d2", {"changes": [good, {"knob": "fake_ra", "target": path, "value": 0}]})
    with pytest.raises(KnobNotDeclared, match="knob 'autogroup' is not declared"):
        _apply(h, "d2", {"changes": [{"knob": "autogroup", "target": path, "value": "0"}]})
    with pytest.raises(KnobValueRefused):
        _apply(h, "d2", {"changes": [{**good, "value": 10**6}]})
    assert {p: p.read_text() for p in before} == before
    assert journal.entries(owner="d2") == []
    # A refusal is an answer to the plugin, not a fault of it.
    assert failures == [] and h.records["outside"].enabled


@pytest.mark.parametrize("where", ["fake", "proc"])
def test_the_plugin_cannot_write_the_kernel_itself(
        host: tuple[PluginHost, list], fake: Path, where: str) -> None:
    h, _ = host
    path = AUTOGROUP if where == "proc" else fake / "kernel/sched_autogroup_enabled"
    before = path.read_text()
    result = _apply(h, "d3", {"direct_write": str(path)})
    assert result["errno"] in (errno.EACCES, errno.EPERM), result
    assert result["uid"] == 65534
    assert path.read_text() == before
    assert _status(_child(h).proc.pid)["Uid"].split()[1] == "65534"  # effective uid


def test_a_crashing_child_disables_that_plugin_only(host: tuple[PluginHost, list]) -> None:
    h, failures = host
    child = _child(h)
    assert h.call_first("schedcp_observe", subsystem="outside") is None
    assert [n for n, _ in failures] == ["outside"]
    assert "the other end closed the plugin channel" in failures[0][1]
    assert not h.records["outside"].enabled and not h.pm.has_plugin("outside")
    assert child.proc.poll() == 3  # reaped, exit status seen
    assert set(h.subsystems()) == {"good"}
    assert h.call_first("schedcp_state", subsystem="good") == {"managed": []}


def test_an_unimportable_third_party_plugin_is_disabled_at_load(tmp_path: Path) -> None:
    failures: list[tuple[str, str]] = []
    h = PluginHost(builtins={}, third_party={"gone": "schedcp_no_such_plugin_module"},
                   load_entry_points=False, on_failure=lambda n, m: failures.append((n, m)))
    assert not h.records["gone"].enabled
    assert "No module named 'schedcp_no_such_plugin_module'" in failures[0][1]


def test_the_configured_plugin_user_runs_the_child(outside_module: str,
                                                   test_users: dict[str, int]) -> None:
    """``[plugins] user``: the child runs as that account; a missing one is named."""
    failures: list[tuple[str, str]] = []
    h = PluginHost(builtins={}, third_party={"outside": outside_module}, load_entry_points=False,
                   on_failure=lambda n, m: failures.append((n, m)), plugin_user=TEST_USER)
    try:
        assert h.records["outside"].enabled, failures
        assert f"(out of process, as {TEST_USER})" in h.records["outside"].origin
        status = _status(_child(h).proc.pid)
        assert status["Uid"].split() == [str(test_users["member"])] * 4
        assert status["CapEff"] == "0000000000000000"
    finally:
        h.shutdown()
    h = PluginHost(builtins={}, third_party={"outside": outside_module}, load_entry_points=False,
                   on_failure=lambda n, m: failures.append((n, m)),
                   plugin_user="schedcp-no-such-user")
    assert not h.records["outside"].enabled
    assert "plugin user 'schedcp-no-such-user' does not exist" in failures[-1][1]
