"""A Debian 12 root image with systemd as PID 1, for the systemd guest.

``build(cache)`` runs ``mmdebstrap`` against the Debian mirror (variant
``minbase`` plus :data:`PACKAGES`: systemd, systemd-sysv, udev, dbus,
polkitd, python3.11, libbpf1, procps -- what schedcp's .deb depends on, so that
``apt install ./schedcp_*.deb`` works offline in the guest), adds the guest
side of the job channel (:data:`JOB_UNIT`, :data:`RUNNER`, :data:`LIB`),
masks units that only slow a TCG boot down (gettys, apt/dpkg/e2scrub/fstrim
timers), and writes the tree into a partitioned ext4 disk image
(:func:`rootfs.partitioned_ext4`).

The image is named by a digest of its inputs (suite, mirror, package list,
the generated files, the mask list and :data:`FORMAT`) and kept in
``<cache>/debian``: it is built once per machine (about 2 minutes here,
most of it downloading).  The mirror's package versions are not part of
the digest: bump :data:`FORMAT` to rebuild with newer packages.  The guest
boots the image with qemu's ``snapshot=on`` (:mod:`systemd_guest`), so
every write of a run is discarded at exit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from plugins.scheduler.microvm import rootfs
from plugins.scheduler.microvm.apt import DEBIAN_MIRROR, FetchError
from plugins.scheduler.microvm.initramfs import MARK

_LOGGER = logging.getLogger(__name__)

SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "polkitd", "python3.11", "libbpf1",
            "procps")
FORMAT = "debian-image/1"
KEEP_IMAGES = 2
# Room for what a job installs (the schedcp .deb unpacks to ~150 MB).
FREE_BYTES = 768 << 20
HOSTNAME = "schedcp-guest"
GUEST_DIR = "usr/local/lib/schedcp-guest"
JOB_SERVICE = "schedcp-job.service"
# Units that cost boot time and do nothing for a throw-away test guest.
MASKED = (
    "getty@tty1.service", "serial-getty@ttyS0.service", "getty.target",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
    "systemd-tmpfiles-clean.timer", "systemd-pstore.service",
    "systemd-networkd-wait-online.service", "systemd-timesyncd.service",
)

# Sourced by the runner and by job scripts: the console protocol of guest.py.
LIB = rf"""# schedcp guest helpers: report over the serial console (guest.py's protocol).
MARK={MARK}
up() {{ cut -d' ' -f1 /proc/uptime; }}
# report STEP EVENT [JSON-FIELD...]   e.g. report svc ready '"pid":42'
report() {{
    _step=$1; _event=$2; shift 2
    _body="\"event\":\"$_event\""
    for _f in "$@"; do _body="$_body,$_f"; done
    echo "$MARK:$_step {{$_body}}"
}}
# run STEP CMD...   CMD's output as @@OUT:STEP lines, then an exit event; returns CMD's status
run() {{
    _step=$1; shift
    report "$_step" start "\"uptime_s\":$(up)"
    "$@" > "${{TMPDIR:-/tmp}}/.out.$_step" 2>&1
    _rc=$?
    sed "s/^/@@OUT:$_step /" "${{TMPDIR:-/tmp}}/.out.$_step"
    report "$_step" exit "\"status\":$_rc"
    return $_rc
}}
# usec PROPERTY UNIT   a monotonic timestamp property of a unit, in microseconds
usec() {{ systemctl show -P "$@"; }}
"""

# Runs once multi-user.target is active: unpack the job, run it, power off.
RUNNER = rf"""#!/bin/sh
. /{GUEST_DIR}/lib.sh
report init boot "\"kernel\":\"$(uname -r)\"" "\"cpus\":$(nproc)" "\"uptime_s\":$(up)" \
    "\"multi_user_us\":$(usec ActiveEnterTimestampMonotonic multi-user.target)" \
    "\"userspace_us\":$(usec UserspaceTimestampMonotonic)"
# The job is namespace 2 of the NVMe controller (names need not follow nsids).
jobdisk() {{
    for d in /sys/block/nvme*n*; do
        [ "$(cat "$d/nsid" 2>/dev/null)" = 2 ] && [ -b "/dev/${{d##*/}}" ] && echo "/dev/${{d##*/}}"
    done
}}
mkdir -p /run/job
if [ -n "$(jobdisk)" ]; then
    tar -xf "$(jobdisk)" -C /run/job || report init job_unpack_failed
fi
if [ -f /run/job/run.sh ]; then
    report init job_start "\"uptime_s\":$(up)"
    (cd /tmp && sh /run/job/run.sh < /dev/null)
    report init job_done "\"status\":$?" "\"uptime_s\":$(up)"
fi
report init end "\"uptime_s\":$(up)"
sync
# Every write is discarded (qemu snapshot): no need to stop the units one by one.
systemctl poweroff --force --force
"""

JOB_UNIT = f"""[Unit]
Description=schedcp guest job (tests): run /run/job/run.sh, report on ttyS0, power off
ConditionKernelCommandLine=schedcp.job=1
After=multi-user.target

[Service]
Type=simple
ExecStart=/{GUEST_DIR}/run-job
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
Environment=HOME=/root
"""


class ImageError(RuntimeError):
    """The Debian image cannot be built (no mmdebstrap, not root, or mmdebstrap failed)."""


def _files() -> dict[str, tuple[str, int]]:
    """Generated files: guest path -> (content, mode)."""
    return {
        f"{GUEST_DIR}/lib.sh": (LIB, 0o644),
        f"{GUEST_DIR}/run-job": (RUNNER, 0o755),
        f"etc/systemd/system/{JOB_SERVICE}": (JOB_UNIT, 0o644),
        "etc/hostname": (HOSTNAME + "\n", 0o644),
        "etc/hosts": (f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost\n", 0o644),
        "etc/fstab": ("# root is mounted read-write by the kernel (rw on its command line)\n",
                      0o644),
        # No fsync per unpacked file: under TCG it doubled the time of an
        # install, and every write of a run is thrown away anyway.
        "etc/dpkg/dpkg.cfg.d/schedcp-guest-unsafe-io": ("force-unsafe-io\n", 0o644),
    }


def digest(mirror: str = DEBIAN_MIRROR) -> str:
    """What names the image: every input that changes what is built."""
    text = "\n".join([FORMAT, SUITE, mirror, " ".join(PACKAGES), " ".join(MASKED),
                      *(f"{path} {mode:o} {hashlib.sha256(content.encode()).hexdigest()}"
                        for path, (content, mode) in sorted(_files().items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _customize(root: Path, machine_id: str) -> None:
    for path, (content, mode) in _files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / JOB_SERVICE).unlink(missing_ok=True)
    (wants / JOB_SERVICE).symlink_to(f"/etc/systemd/system/{JOB_SERVICE}")
    for unit in MASKED:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # A fixed machine id: no first-boot logic (presets, firstboot) at each run.
    (root / "etc/machine-id").write_text(machine_id + "\n")


def _mmdebstrap(root: Path, mirror: str) -> None:
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise ImageError("mmdebstrap not found (apt-get install mmdebstrap; "
                         "requirements-apt.txt lists it)")
    if os.geteuid() != 0:
        raise ImageError("building the Debian guest image needs root (mmdebstrap's root mode)")
    cmd = [tool, "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}",
           "--components=main", SUITE, str(root), f"deb {mirror} {SUITE} main",
           f"deb {mirror} {SUITE}-updates main"]
    _LOGGER.info("building the Debian guest image: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).strip()[-1500:]
        if "Could not resolve" in text or "Failed to fetch" in text or "Temporary failure" in text:
            raise FetchError(f"mmdebstrap could not reach {mirror}: {text}")
        raise ImageError(f"mmdebstrap failed: {text}")


def _blocks(root: Path) -> tuple[int, int]:
    """(4 KiB blocks, inodes) the tree needs."""
    blocks = inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            info = os.lstat(os.path.join(dirpath, name))
            inodes += 1
            blocks += (info.st_size + 4095) // 4096
    return blocks, inodes


def build(cache: Path, mirror: str = DEBIAN_MIRROR) -> rootfs.RootImage:
    """Build (or reuse) the Debian guest image; its ``root=`` is a PARTUUID."""
    directory = cache / "debian"
    directory.mkdir(parents=True, exist_ok=True)
    name = digest(mirror)
    signature = rootfs.disk_signature(name)
    out = rootfs.RootImage(directory / f"debian-{name}.img", f"{signature:08x}-01")
    if out.path.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="debian-", dir=directory) as tmp:
        root = Path(tmp) / "root"
        _mmdebstrap(root, mirror)
        _customize(root, hashlib.sha256(name.encode()).hexdigest()[:32])
        blocks, inodes = _blocks(root)
        size = (int(blocks * 4096 * 1.2) + FREE_BYTES) // 4096 * 4096
        image = Path(tmp) / "image.img"
        rootfs.partitioned_ext4(root, image, signature, size, inodes + 65536)
        image.rename(out.path)
    for old in sorted(directory.glob("debian-*.img"), key=lambda p: p.stat().st_mtime,
                      reverse=True)[KEEP_IMAGES:]:
        old.unlink()
    _LOGGER.info("Debian guest image ready: %s", out.path)
    return out
