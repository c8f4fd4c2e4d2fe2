"""Static checks of io policies and the io guards, on loop devices and a scratch file system."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.io import blockdev, verification
from plugins.io.guards import IoGuards
from plugins.io.sandbox import ScratchDevice, stop
from schedcpd.plugin_api import ActivePolicy, BreakerSettings
from tests.harness import wait_until


@pytest.fixture
def scratch_fs(loopdev: ScratchDevice, tmp_path: Path) -> Iterator[Path]:
    """An ext4 file system on the loop device, mounted under the test's tmp dir."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mkfs.ext4", "-q", "-F", loopdev.path], check=True, capture_output=True)
    subprocess.run(["mount", loopdev.path, str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _codes(findings: list[Any]) -> dict[str, str]:
    return {f["field"]: f["code"] for f in findings if f["severity"] != "info"}


def test_static_checks_name_device_range_daemon_and_conflict(
        loopdev: ScratchDevice, scratch_fs: Path) -> None:
    dev = loopdev.name
    state = scratch_fs / "state"
    state.mkdir()
    doc = {"device": [{"name": "nosuchdisk9", "nr_requests": 8}, {"name": dev,
                                                                    "read_ahead_kb": 64}],
           "group": [{"name": "self", "match": {"pids": [os.getpid()]},
                      "ioprio": {"class": "idle"}},
                     {"name": "bulk", "match": {"comm": ["nothing-runs-this"]},
                      "ioprio": {"class": "rt", "level": 0},
                      "throttle": [{"device": dev, "write_bps": 2**20}]}]}
    active: list[ActivePolicy] = [{
        "policy_id": "p0", "name": "other", "subsystem": "io", "deployment_id": "d0",
        "document": f'[[device]]\nname = "{dev}"\nread_ahead_kb = 128\n'}]
    assert _codes(verification.static_check(doc, active, state)) == {
        "device[0].name": "unknown-device",
        "group[0].match": "lowers-daemon",
        "group[1].ioprio.class": "realtime-io",
        "group[1].throttle[0].write_bps": "starves-state-device",
        "device": "conflict"}
    # The same limits on a device that does not hold the state directory are fine.
    elsewhere = Path(__file__).parent
    assert "group[1].throttle[0].write_bps" not in _codes(
        verification.static_check(doc, [], elsewhere))


def test_guards_measure_a_writers_rate_and_give_a_lowered_group_the_donor_role(
        loopdev: ScratchDevice) -> None:
    writer = subprocess.Popen(
        ["fio", "--name=w", f"--filename={loopdev.path}", "--rw=write", "--bs=64k",
         "--direct=1", "--time_based=1", "--runtime=60", "--rate=4m"],
        stdout=subprocess.DEVNULL)
    try:
        policy = {"group": [{"name": "w", "match": {"pids": [writer.pid]},
                             "ioprio": {"class": "idle"}}]}
        pids = wait_until(lambda: [writer.pid, *_children(writer.pid)][1:] and
                          [writer.pid, *_children(writer.pid)], what="fio job")
        guards = IoGuards(policy, {"w": pids})
        assert guards.sample() == {}  # the first call primes
        samples = [wait_until(lambda: _moved(guards), what="bytes moved", timeout=20)]
        assert samples[0]["w"].throughput > 0 and samples[0]["w"].units == len(pids)
        assert guards.roles(samples, BreakerSettings()).roles == {"w": "donor"}
        assert guards.alive()
    finally:
        stop(writer)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _moved(guards: IoGuards) -> dict[str, Any] | None:
    sample = guards.sample()
    return sample if sample.get("w") and sample["w"].throughput > 0 else None


def test_builtin_io_policies_pass_schema_and_static_checks(tmp_path: Path) -> None:
    import tomllib

    from plugins.io import policy

    paths = sorted(Path(__file__).parents[2].joinpath("policies").glob("io-*.toml"))
    assert len(paths) >= 2
    for path in paths:
        doc = tomllib.loads(path.read_text())
        assert doc["policy"]["subsystem"] == "io"
        assert policy.validate(doc) == [], path.name
        # Reads only.  They name vda: on a machine without it, that is the one finding.
        missing = {f"device[{i}].name": "unknown-device" for i, d in enumerate(doc["device"])
                   if blockdev.identity(d["name"]) is None}
        assert _codes(verification.static_check(doc, [], tmp_path)) == missing, path.name
