"""The guest host's root filesystem: this machine's schedcp in a read-only ext4 image.

The image holds, at the same paths as on this machine:

- the venv (``$SCHEDCP_VENV`` as for scripts/bootstrap, default
  ``/opt/schedcp/venv``: schedcp and all its dependencies) and
  the Python it was made with (its executable and standard library, read
  from the venv's ``pyvenv.cfg``);
- ``dbus-daemon`` and ``busctl``, ``hackbench`` when installed;
- every shared library all of those need: ``ldd`` over the executables and
  over every ELF shared object in the trees above, plus ``libbpf.so.1``
  (loaded with ctypes by schedcpd's probes, so invisible to ldd);
- the micro-VM build (schedulers, static loader, workloads) at its cache
  path, linked from ``/usr/local/lib/schedcp/scx`` and from ``/usr/bin``
  (so ``/bin/scx_loader`` is where :mod:`job` scripts expect it),
  and the kernel config as ``/boot/config-<ver>`` (libbpf reads it);
- busybox with its applets (the userland of the init script);
- the scheduler sources (bpf/scx) at ``/usr/lib/schedcp/scx``, where the
  installed code finds them (as in the Debian package);
- ``/etc/schedcp/schedcpd.toml`` as shipped, the shipped bus policy in
  ``/etc/dbus-1/system.d`` and a system-like bus configuration
  (``schedcp_bench.services.system_like_bus_config``, the one the tests'
  private bus uses) as ``/usr/share/dbus-1/system.conf``;
- ``/init`` (:data:`INIT`), which mounts the writable tmpfs and starts the
  bus and schedcpd.

Symbolic links on the way to a file (``/lib -> usr/lib``, soname links) are
reproduced, so paths resolve in the guest as they do here.  The image is
a partitioned disk: an MBR with one partition (type 0x83 at 1 MiB)
holding the ext4 file system (``mke2fs -E offset=``), so the kernel finds
it as ``root=PARTUUID=<disk signature>-01`` whatever name the NVMe driver
gives it (with a second namespace for the job, the names follow the
order the asynchronous scan finishes in, not the namespace ids).  It is
named by a digest of what goes in (guest path, mode, size and mtime of each
host file; the content of generated files): a second build with nothing
changed reuses it.  ``ldd``'s answers are remembered per (path, size,
mtime) because asking again takes ~10 s on this machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from plugins.scheduler.microvm import paths
from plugins.scheduler.microvm.build import Artifacts
from plugins.scheduler.microvm.initramfs import MARK, shared_libraries
from plugins.scheduler.microvm.kernel import GuestKernel
from schedcp_bench.services import POLICY_FILE, find_policy_dir, system_like_bus_config
from schedcpd.plugin_api import BUS_NAME, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR

_LOGGER = logging.getLogger(__name__)

DEFAULT_VENV = Path("/opt/schedcp/venv")
BUSYBOX = Path("/bin/busybox")
BINARIES = (Path("/usr/bin/dbus-daemon"), Path("/usr/bin/busctl"))
OPTIONAL_BINARIES = (Path("/usr/bin/hackbench"),)
DLOPENED = ("libbpf.so.1",)
LIBRARY_DIRS = (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib"))
SHIPPED_CONFIG = Path(__file__).resolve().parents[3] / "etc" / "schedcpd.toml"
BUS_SOCKET = "/run/dbus/system_bus_socket"
SCX_LINK = "usr/local/lib/schedcp/scx"
INIT_PATH = "/init"
READY_TIMEOUT_S = 240
KEEP_IMAGES = 2
PARTITION_OFFSET = 1 << 20
# Part of every image's digest: change it when the builder lays the disk out
# differently with the same entries (partitioning, mke2fs use).
IMAGE_FORMAT = f"mbr+ext4@{PARTITION_OFFSET}/1"
MKE2FS_OPTIONS = ["-t", "ext4", "-b", "4096", "-m", "0", "-O", "^has_journal",
                  "-L", "schedcp-root", "-E", "root_owner=0:0"]  # + offset, in build()

_PASSWD = ("root:x:0:0:root:/root:/bin/sh\nmessagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
_GROUP = "root:x:0:\nmessagebus:x:101:\nschedcp:x:998:\nnogroup:x:65534:\n"

# The guest's /init (busybox sh).  @NAME@ placeholders are filled in by
# :func:`init_script`.  Events: boot, bus, schedcpd_ready | schedcpd_failed,
# job_start/job_done, schedcpd_stopped, end (see docs/sched_ext.md).
INIT = r"""#!/bin/sh
# /init of the schedcp guest host (plugins/scheduler/microvm/rootfs.py).
export PATH=@VENV@/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
export HOME=/root LANG=C.UTF-8
up() { read -r u _ < /proc/uptime; echo "$u"; }
report() {
    step=$1; body="\"event\":\"$2\""; shift 2
    for kv in "$@"; do body="$body,$kv"; done
    echo "@MARK@:$step {$body}"
}
dump() { sed "s/^/@@OUT:$1 /" "$2"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp
mount -t tmpfs -o mode=0700 state @STATE_DIR@
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up
hostname schedcp-guest
report init boot "\"kernel\":\"$(uname -r)\"" "\"cpus\":$(nproc)" "\"uptime_s\":$(up)"

# The job is namespace 2 of the NVMe controller (names need not follow nsids).
jobdisk() {
    for d in /sys/block/nvme*n*; do
        [ "$(cat "$d/nsid" 2>/dev/null)" = 2 ] && [ -b "/dev/${d##*/}" ] && echo "/dev/${d##*/}"
    done
}
if grep -q 'schedcp.job=1' /proc/cmdline; then
    n=0
    while [ -z "$(jobdisk)" ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done
    mkdir -p /run/job
    tar -xf "$(jobdisk)" -C /run/job || report init job_unpack_failed
fi
# A job may bring schedcpd's configuration (e.g. where the schedulers are).
CONFIG=""
[ -f /run/job/schedcpd.toml ] && CONFIG="--config /run/job/schedcpd.toml"

mkdir -p /run/dbus
dbus-daemon --system --nofork --nopidfile --nosyslog > /run/dbus-daemon.log 2>&1 &
n=0
while [ ! -S @BUS_SOCKET@ ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n + 1)); done
if [ -S @BUS_SOCKET@ ]; then
    report init bus "\"uptime_s\":$(up)"
    schedcpd --bus system $CONFIG > /run/schedcpd.log 2>&1 &
    SCHEDCPD=$!
    read -r u _ < /proc/uptime; deadline=$((${u%.*} + @READY_TIMEOUT@))
    ready=0
    while kill -0 $SCHEDCPD 2>/dev/null; do
        if busctl --system status @BUS_NAME@ > /dev/null 2>&1; then ready=1; break; fi
        read -r u _ < /proc/uptime; [ ${u%.*} -ge $deadline ] && break
        sleep 0.1
    done
    if [ $ready = 1 ]; then
        report init schedcpd_ready "\"uptime_s\":$(up)"
    else
        alive=0; kill -0 $SCHEDCPD 2>/dev/null && alive=1
        report init schedcpd_failed "\"uptime_s\":$(up)" "\"alive\":$alive"
    fi
else
    report init bus_failed "\"uptime_s\":$(up)"
    dump dbus-log /run/dbus-daemon.log
fi

if [ -f /run/job/run.sh ]; then
    report init job_start "\"uptime_s\":$(up)"
    (cd /tmp && sh /run/job/run.sh < /dev/null)
    report init job_done "\"status\":$?" "\"uptime_s\":$(up)"
fi

if [ -n "$SCHEDCPD" ] && kill -0 $SCHEDCPD 2>/dev/null; then
    kill -TERM $SCHEDCPD
    n=0
    while kill -0 $SCHEDCPD 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    kill -0 $SCHEDCPD 2>/dev/null && kill -KILL $SCHEDCPD
    wait $SCHEDCPD
    report init schedcpd_stopped "\"status\":$?" "\"uptime_s\":$(up)"
fi
[ -f /run/schedcpd.log ] && dump schedcpd-log /run/schedcpd.log
dmesg | tail -n 300 | sed 's/^/@@DMESG /'
report init end
sync
# The console is a 16550 UART: let its queue drain before power-off.
sleep 1
poweroff -f
"""


class RootfsError(RuntimeError):
    """The image cannot be built: a part is missing or mke2fs failed."""


class RootImage(NamedTuple):
    """A built image and the ``root=`` the kernel finds it by."""

    path: Path
    partuuid: str

    @property
    def root(self) -> str:
        """The kernel's ``root=`` value."""
        return f"PARTUUID={self.partuuid}"


def disk_signature(digest: str) -> int:
    """The MBR disk signature (part of the PARTUUID) for an image named by ``digest``."""
    return int(digest[:8], 16) | 1  # never 0


def _mbr(signature: int, fs_bytes: int) -> bytes:
    """A master boot record with one Linux partition at PARTITION_OFFSET."""
    start, sectors = PARTITION_OFFSET // 512, fs_bytes // 512
    entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                        start, sectors)
    return (b"\0" * 440 + struct.pack("<IH", signature, 0) + entry + b"\0" * 48
            + b"\x55\xaa")


def venv_dir() -> Path:
    """The venv that goes into the image: ``$SCHEDCP_VENV`` or /opt/schedcp/venv."""
    return Path(os.environ.get("SCHEDCP_VENV") or DEFAULT_VENV)


def init_script(venv: Path | None = None) -> str:
    """The guest's /init with its placeholders filled in."""
    values = {"VENV": str(venv or venv_dir()), "MARK": MARK, "STATE_DIR": DEFAULT_STATE_DIR,
              "BUS_SOCKET": BUS_SOCKET, "BUS_NAME": BUS_NAME,
              "READY_TIMEOUT": str(READY_TIMEOUT_S)}
    text = INIT
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


class Entry(NamedTuple):
    """One thing in the image: a directory, a link, a generated file or a host file."""

    kind: str  # "dir", "link", "data" or "file"
    mode: int = 0o755
    target: str = ""  # link target, or the host file
    size: int = 0
    mtime_ns: int = 0
    content: bytes = b""

    def describe(self) -> str:
        """What the digest covers."""
        if self.kind == "data":
            return f"data {self.mode:o} {hashlib.sha256(self.content).hexdigest()}"
        return f"{self.kind} {self.mode:o} {self.target} {self.size} {self.mtime_ns}"


class Tree:
    """What goes into the image: guest path (relative, no leading /) -> entry."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def directory(self, guest: str, mode: int = 0o755) -> None:
        """A directory and its parents (an existing entry wins)."""
        parts = guest.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), Entry("dir", mode))

    def _parent(self, guest: str) -> str:
        guest = guest.strip("/")
        if "/" in guest:
            self.directory(guest.rsplit("/", 1)[0])
        return guest

    def data(self, guest: str, content: bytes, mode: int = 0o644) -> None:
        """A generated file."""
        self.entries[self._parent(guest)] = Entry("data", mode, content=content)

    def symlink(self, guest: str, target: str) -> None:
        """A symbolic link (an existing entry wins)."""
        self.entries.setdefault(self._parent(guest), Entry("link", 0o777, target))

    def _file(self, guest: str, path: Path, info: os.stat_result) -> None:
        self.entries[self._parent(guest)] = Entry("file", stat.S_IMODE(info.st_mode), str(path),
                                                  info.st_size, info.st_mtime_ns)

    def host(self, path: Path, _depth: int = 0) -> Path | None:
        """A host path at the same guest path, with every symlink on the way.

        Returns the real file or directory it names, or None if it is dangling.
        """
        if _depth > 40:
            raise RootfsError(f"too many levels of symbolic links at {path}")
        parts = Path(os.path.normpath(path)).parts[1:]
        current = Path("/")
        for i, part in enumerate(parts):
            current = current / part
            try:
                info = current.lstat()
            except FileNotFoundError:
                return None
            guest = str(current)[1:]
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(current)
                self.symlink(guest, target)
                rest = Path(*parts[i + 1:]) if i + 1 < len(parts) else Path()
                base = Path(target) if os.path.isabs(target) else current.parent / target
                return self.host(base / rest, _depth + 1)
            if stat.S_ISDIR(info.st_mode):
                self.directory(guest, stat.S_IMODE(info.st_mode))
            elif i == len(parts) - 1 and stat.S_ISREG(info.st_mode):
                self._file(guest, current, info)
            else:
                raise RootfsError(f"{current} is neither a directory nor a regular file")
        return current

    def host_tree(self, root: Path) -> None:
        """A whole host directory; links that leave it bring their targets along."""
        self.host(root)
        links: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath) / name
                info = path.lstat()
                guest = str(path)[1:]
                if stat.S_ISLNK(info.st_mode):
                    self.symlink(guest, os.readlink(path))
                    links.append(path)
                elif stat.S_ISDIR(info.st_mode):
                    self.directory(guest, stat.S_IMODE(info.st_mode))
                elif stat.S_ISREG(info.st_mode):
                    self._file(guest, path, info)
        for link in links:
            self.host(link)

    def host_files(self) -> list[Path]:
        """Every host file that goes in."""
        return [Path(e.target) for e in self.entries.values() if e.kind == "file"]

    def digest(self) -> str:
        """A digest of every entry (host files by mode, size and mtime)."""
        h = hashlib.sha256(f"{IMAGE_FORMAT} {' '.join(MKE2FS_OPTIONS)}".encode())
        for guest in sorted(self.entries):
            h.update(f"{guest}\0{self.entries[guest].describe()}\n".encode())
        return h.hexdigest()[:20]

    def blocks(self) -> int:
        """4 KiB blocks the content needs (files rounded up, one per other entry)."""
        return sum(-(-e.size // 4096) if e.kind == "file" else
                   -(-len(e.content) // 4096) or 1 for e in self.entries.values())

    def stage(self, dest: Path) -> None:
        """Lay the tree out under ``dest`` (hard links to host files where possible)."""
        modes: list[tuple[Path, int]] = []
        for guest in sorted(self.entries):
            entry, out = self.entries[guest], dest / guest
            if entry.kind == "dir":
                out.mkdir(parents=True, exist_ok=True)
                modes.append((out, entry.mode))
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            if entry.kind == "link":
                os.symlink(entry.target, out)
            elif entry.kind == "data":
                out.write_bytes(entry.content)
                out.chmod(entry.mode)
            else:
                try:
                    os.link(entry.target, out)
                except OSError:  # another file system, or hard links refused
                    shutil.copy2(entry.target, out)
        for path, mode in reversed(modes):
            path.chmod(mode)


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


class _LddMemo:
    """ldd's answers, remembered by (path, size, mtime) in ``<dir>/ldd.json``."""

    def __init__(self, directory: Path) -> None:
        self.file = directory / "ldd.json"
        try:
            self.known: dict[str, list[Any]] = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def libraries(self, path: Path) -> list[Path]:
        info = path.stat()
        key = [info.st_size, info.st_mtime_ns]
        memo = self.known.get(str(path))
        if memo is None or memo[0] != key:
            libs = [str(p) for p in shared_libraries(path)]
            memo = self.known[str(path)] = [key, libs]
            self.changed = True
        return [Path(p) for p in memo[1]]

    def save(self) -> None:
        if self.changed:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.known))
            tmp.rename(self.file)


def _python_of(venv: Path) -> tuple[Path, Path]:
    """The venv's Python executable and standard library (from ``pyvenv.cfg``)."""
    cfg = venv / "pyvenv.cfg"
    if not cfg.is_file():
        raise RootfsError(f"{venv} is not a venv (no pyvenv.cfg): run scripts/bootstrap")
    fields = dict(line.split("=", 1) for line in cfg.read_text().splitlines() if "=" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    version = ".".join(fields.get("version", "").split(".")[:2])
    exe = Path(fields.get("executable") or f"{fields.get('home', '/usr/bin')}/python{version}")
    stdlib = Path(f"/usr/lib/python{version}")
    if not exe.is_file() or not (stdlib / "os.py").is_file():
        raise RootfsError(f"the venv's Python ({exe}, {stdlib}) is not installed")
    return exe, stdlib


def _find_library(name: str) -> Path | None:
    return next((d / name for d in LIBRARY_DIRS if (d / name).exists()), None)


def collect(kernel: GuestKernel, artifacts: Artifacts, memo_dir: Path,
            venv: Path | None = None) -> Tree:
    """Everything the image holds, as a :class:`Tree`."""
    for needed in (BUSYBOX, *BINARIES):
        if not needed.is_file():
            raise RootfsError(f"{needed} is missing (see requirements-apt.txt)")
    venv = venv or venv_dir()
    python, stdlib = _python_of(venv)
    tree = Tree()
    for link in ("/bin", "/sbin", "/lib", "/lib64"):
        if Path(link).is_symlink():  # merged /usr, as on Debian 12
            tree.host(Path(link))
    tree.host_tree(venv)
    tree.host_tree(stdlib)
    for built in (artifacts.directory / "manifest.json", *artifacts.objects.values(),
                  *artifacts.binaries.values()):
        tree.host(built)
    roots = [python, BUSYBOX, *BINARIES, *[b for b in OPTIONAL_BINARIES if b.is_file()]]
    roots += [p for p in (_find_library(n) for n in DLOPENED) if p is not None]
    for path in roots:
        tree.host(path)
    # ldd over the executables and every ELF shared object or program inside.
    memo = _LddMemo(memo_dir)
    elves = [p for p in tree.host_files()
             if (".so" in p.name or os.access(p, os.X_OK)) and _is_elf(p)]
    inside = (str(venv) + "/", str(artifacts.directory) + "/")
    needed_libs: set[Path] = set()
    for path in elves:
        needed_libs.update(lib for lib in memo.libraries(path)
                           if not str(lib).startswith(inside))
    memo.save()
    for lib in sorted(needed_libs):
        if tree.host(lib) is None:
            raise RootfsError(f"{lib} (needed by the image's programs) does not exist")
    _busybox_applets(tree)
    _configuration(tree, kernel, artifacts, venv)
    return tree


def _busybox_applets(tree: Tree) -> None:
    listing = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True,
                             check=True).stdout
    real = os.path.realpath(BUSYBOX)
    for applet in listing.split():
        if "/" not in applet:  # linuxrc: an initramfs's init, not wanted here
            continue
        where = os.path.realpath("/" + os.path.dirname(applet))[1:]
        guest = f"{where}/{os.path.basename(applet)}"
        if guest not in tree.entries:
            tree.symlink(guest, real)


def _configuration(tree: Tree, kernel: GuestKernel, artifacts: Artifacts, venv: Path) -> None:
    for mount, mode in (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755),
                        ("tmp", 0o1777), ("root", 0o700), (DEFAULT_STATE_DIR, 0o700)):
        tree.directory(mount, mode)
    tree.symlink("var/run", "/run")
    tree.data(INIT_PATH, init_script(venv).encode(), 0o755)
    tree.data("etc/passwd", _PASSWD.encode())
    tree.data("etc/group", _GROUP.encode())
    tree.data("etc/hostname", b"schedcp-guest\n")
    config = SHIPPED_CONFIG if SHIPPED_CONFIG.is_file() else Path(DEFAULT_CONFIG_PATH)
    if not config.is_file():
        raise RootfsError(f"schedcpd's configuration is in neither {SHIPPED_CONFIG} "
                          f"nor {DEFAULT_CONFIG_PATH}")
    tree.data(DEFAULT_CONFIG_PATH, config.read_bytes())
    tree.data(f"etc/dbus-1/system.d/{POLICY_FILE}",
              (find_policy_dir() / POLICY_FILE).read_bytes())
    tree.data("usr/share/dbus-1/system.conf",
              system_like_bus_config(BUS_SOCKET, "/etc/dbus-1/system.d").encode())
    tree.data(f"boot/config-{kernel.version}", kernel.config.read_bytes())
    tree.symlink(SCX_LINK, str(artifacts.directory))
    # The scheduler sources where the installed code looks for them (as the
    # Debian package ships them): a T2 deployment reads its scheduler's source.
    source = paths.scx_source_dir()
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.suffix in (".c", ".h"):
            rel = path.relative_to(source)
            tree._file(f"{str(paths.INSTALLED_SOURCE)[1:]}/{rel}", path, path.stat())
    for name, path in artifacts.binaries.items():
        tree.symlink(f"usr/bin/{name}", str(path))


def build(cache: Path, kernel: GuestKernel, artifacts: Artifacts,
          venv: Path | None = None) -> RootImage:
    """Build (or reuse) the image for this machine's schedcp."""
    directory = cache / "rootfs"
    directory.mkdir(parents=True, exist_ok=True)
    tree = collect(kernel, artifacts, directory, venv)
    digest = tree.digest()
    signature = disk_signature(digest)
    out = RootImage(directory / f"rootfs-{digest}.img", f"{signature:08x}-01")
    if out.path.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=directory) as tmp:
        staging = Path(tmp) / "root"
        staging.mkdir()
        tree.stage(staging)
        image = Path(tmp) / "image.img"
        size = (int(tree.blocks() * 4096 * 1.15) + (64 << 20)) // 4096 * 4096
        _LOGGER.info("building the guest host image: %d entries, %.0f MiB",
                     len(tree.entries), size / 2**20)
        partitioned_ext4(staging, image, signature, size, len(tree.entries) + 4096)
        image.rename(out.path)
    for old in sorted(directory.glob("rootfs-*.img"), key=lambda p: p.stat().st_mtime,
                      reverse=True)[KEEP_IMAGES:]:
        old.unlink()
    return out


def partitioned_ext4(tree: Path, image: Path, signature: int, size: int, inodes: int) -> None:
    """Write ``tree`` as an ext4 file system of ``size`` bytes in partition 1 of ``image``.

    An MBR (disk ``signature``) with one Linux partition at PARTITION_OFFSET;
    ``mke2fs -d`` copies the tree with its owners and modes.
    """
    mke2fs = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
    if not os.path.exists(mke2fs):
        raise RootfsError("mke2fs not found (apt-get install e2fsprogs)")
    with open(image, "wb") as disk:
        disk.write(_mbr(signature, size))
        disk.truncate(PARTITION_OFFSET + size)
    proc = subprocess.run([mke2fs, "-q", "-F", *MKE2FS_OPTIONS, "-N", str(inodes),
                           "-E", f"offset={PARTITION_OFFSET}", "-d", str(tree),
                           str(image), f"{size // 1024}k"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RootfsError(f"mke2fs failed: {(proc.stderr or proc.stdout)[-2000:]}")
