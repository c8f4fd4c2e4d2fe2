"""The io plugin's writes go through the core's actuator, on a real loop device and tasks.

- A scheduler switch resets the queue depth (the kernel does): an
  administrator's ``nr_requests`` is journaled before the switch and back
  after the restore.
- Crash recovery after an upgrade: entries the old plugin wrote itself
  (no ``target``; a ``sched`` entry whose prior held ``nr_requests``;
  throttle limits as numbers; its own cgroup directory and move) are
  written the old way into a real journal file, with the kernel values the
  old code set; a new plugin starts on that journal (the daemon's start-up)
  and restores every value exactly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from plugins.io import blkio, blockdev, ioprio
from plugins.io.plugin import IoPlugin
from plugins.io.sandbox import ScratchDevice
from schedcpd.plugin_api import Journal, PluginContext


def _start(tmp_path: Path, journal: Journal) -> IoPlugin:
    plugin = IoPlugin()
    plugin.schedcp_startup(PluginContext(state_dir=tmp_path, journal=journal))
    return plugin


def test_an_administrators_queue_depth_survives_a_scheduler_switch_and_restore(
        io_plugin: IoPlugin, loopdev: ScratchDevice, journal: Journal) -> None:
    dev, q = loopdev.name, blockdev.SYSFS / loopdev.name / "queue"
    assert blockdev.schedulers(dev)[0] == "none"
    (q / "nr_requests").write_text("40")  # not what switching back to none gives (128)
    doc = {"device": [{"name": dev, "scheduler": "kyber", "read_ahead_kb": 256,
                       "nr_requests": 64}]}
    io_plugin.schedcp_apply("io", doc, {"owner": "s1"}, False)
    assert (blockdev.schedulers(dev)[0], blockdev.read(dev, "nr_requests")) == ("kyber", "64")
    assert io_plugin.actuator is not None and io_plugin.actuator.overridden() == []
    held = {e.key.split(":", 3)[-1]: (e.kind, e.prior, e.new)
            for e in journal.entries(owner="s1")}
    assert held["scheduler|reset:nr_requests"] == ("queue", "40", "256")  # the switch's
    assert held["nr_requests"] == ("queue", "256", "64")  # the policy's, after it
    assert held["scheduler"] == ("sched", "none", "kyber")
    report = io_plugin.schedcp_restore("io", {"owner": "s1"})
    assert report is not None and report["summary"] == {"restored": 4}, report
    assert (blockdev.schedulers(dev)[0], blockdev.read(dev, "nr_requests")) == ("none", "40")


def test_entries_the_old_plugin_wrote_are_restored_after_an_upgrade(
        tmp_path: Path, loopdev: ScratchDevice) -> None:
    dev, q = loopdev.name, blockdev.SYSFS / loopdev.name / "queue"
    ident = blockdev.identity(dev) or ""
    mm = ident.replace(":", "_")
    (q / "nr_requests").write_text("40")
    before = {"scheduler": blockdev.schedulers(dev)[0], "nr": "40",
              "ra": blockdev.read(dev, "read_ahead_kb")}
    sleeper = subprocess.Popen(["sleep", "600"])
    cg = blkio.group_dir("old", "g")
    path = tmp_path / "journal.db"
    try:
        prio = ioprio.get(sleeper.pid)
        start = ioprio.start_time(sleeper.pid)
        old = Journal(path)  # the old daemon: journal, write, mark applied; no targets

        def old_write(kind: str, key: str, prior: object, new: object, write: object) -> int:
            entry = old.record("old", kind, key, prior, new, subsystem="io")
            assert callable(write)
            write()
            old.mark_applied(entry)
            return entry

        old_write("sched", f"queue:{dev}:{mm}:scheduler", {"scheduler": before["scheduler"],
                                                            "nr_requests": "40"}, "kyber",
                  lambda: (q / "scheduler").write_text("kyber"))
        old_write("queue", f"queue:{dev}:{mm}:read_ahead_kb", before["ra"], "512",
                  lambda: (q / "read_ahead_kb").write_text("512"))
        old_write("ioprio", f"ioprio:{sleeper.pid}:{start}", prio, ioprio.value("be", 7),
                  lambda: subprocess.run(["ionice", "-c2", "-n7", "-p", str(sleeper.pid)],
                                         check=True))
        old_write("mkdir", f"blkio_dir:{cg}", None, str(cg), lambda: cg.mkdir())
        old_write("throttle", f"blkio:{cg}:write_bps:{mm}", 0, 2**20,
                  lambda: blkio.write_limit(cg, "write_bps", ident, 2**20))
        old.close()  # the old daemon died with all of it applied
        assert blockdev.read(dev, "nr_requests") == "256"  # the switch reset it

        journal = Journal(path)
        plugin = _start(tmp_path, journal)  # the upgraded daemon's start-up
        try:
            kinds = {e.kind: e.target for e in journal.pending_restore(subsystem="io")}
            assert kinds["sched"] == str((q / "scheduler").resolve())
            assert kinds["throttle"] == str(cg / blkio.FILES["write_bps"])
            assert kinds["ioprio"] == f"{sleeper.pid}:{start}"
            assert kinds["mkdir"] == ""  # the plugin's own, as before
            report = plugin.schedcp_restore("io", {})
            assert report is not None
            assert set(report["summary"]) == {"restored"}, [
                (e["kind"], e["outcome"], e["note"]) for e in report["entries"]]
            assert len(report["entries"]) == 6  # with the depth the scheduler reset
        finally:
            plugin.schedcp_shutdown()
            journal.close()
        assert {"scheduler": blockdev.schedulers(dev)[0], "nr": blockdev.read(dev, "nr_requests"),
                "ra": blockdev.read(dev, "read_ahead_kb")} == before
        assert ioprio.get(sleeper.pid) == prio
        assert not cg.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        if cg.exists():
            blkio.remove_dir(cg)
