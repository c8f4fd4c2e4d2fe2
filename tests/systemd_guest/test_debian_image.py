"""The Debian guest image's inputs and the qemu disks, without building or booting."""

from __future__ import annotations

import subprocess
from pathlib import Path

from plugins.scheduler.microvm import debian_image, systemd_guest
from plugins.scheduler.microvm.guest import GuestResult, _parse


def test_guest_scripts_are_valid_sh() -> None:
    here = Path(__file__).parent
    for text in (debian_image.LIB, debian_image.RUNNER, (here / "scenario.sh").read_text(),
                 (here / "cgroups.sh").read_text()):
        proc = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_lib_reports_in_the_console_protocol(tmp_path: Path) -> None:
    script = (f"{debian_image.LIB}\nrun demo sh -c 'echo hello; exit 3'\n"
              "report demo done '\"n\":1'\n")
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    result = GuestResult()
    for line in proc.stdout.splitlines():
        _parse(result, line)
    assert result.output["demo"] == ["hello"]
    assert [e["event"] for e in result.step("demo")] == ["start", "exit", "done"]
    assert result.first("demo", "exit") == {"event": "exit", "status": 3}
    assert result.first("demo", "done") == {"event": "done", "n": 1}


def test_digest_covers_the_inputs() -> None:
    assert debian_image.digest() == debian_image.digest()
    assert debian_image.digest("http://mirror.example/debian") != debian_image.digest()


def test_root_disk_discards_writes_and_job_disk_is_read_only(tmp_path: Path) -> None:
    args = systemd_guest.qemu_disks(tmp_path / "root.img", tmp_path / "job.tar")
    drives = [args[i + 1] for i, a in enumerate(args) if a == "-drive"]
    assert "snapshot=on" in drives[0].split(",") and "readonly=on" not in drives[0]
    assert "readonly=on" in drives[1].split(",")
    assert "nsid=1" in args[args.index("-device", 2) + 1]
