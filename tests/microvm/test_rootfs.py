"""The guest host image's file tree: links on the way to a file, the digest, the layout.

No image is built here (tests/microvm/test_host.py boots a real one); these
run on a temporary directory in well under a second.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from plugins.scheduler.microvm import rootfs


def test_links_on_the_way_to_a_file_are_reproduced(tmp_path: Path) -> None:
    real = tmp_path / "usr" / "lib"
    real.mkdir(parents=True)
    (real / "libx.so.1.2").write_bytes(b"\x7fELF")
    os.symlink("libx.so.1.2", real / "libx.so.1")
    os.symlink("usr/lib", tmp_path / "lib")  # merged /usr, relative
    tree = rootfs.Tree()
    found = tree.host(tmp_path / "lib" / "libx.so.1")
    assert found == real / "libx.so.1.2"
    guest = str(tmp_path)[1:]
    assert tree.entries[f"{guest}/lib"] == rootfs.Entry("link", 0o777, "usr/lib")
    assert tree.entries[f"{guest}/usr/lib/libx.so.1"].target == "libx.so.1.2"
    assert tree.entries[f"{guest}/usr/lib/libx.so.1.2"].kind == "file"
    assert tree.host(tmp_path / "missing") is None


def test_a_tree_brings_the_targets_of_links_that_leave_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "custom.py").write_text("x = 1\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(tmp_path / "etc" / "custom.py", lib / "custom.py")
    tree = rootfs.Tree()
    tree.host_tree(lib)
    assert tree.entries[f"{str(tmp_path)[1:]}/etc/custom.py"].kind == "file"


def test_the_digest_follows_content_and_is_stable(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one")
    first, again = rootfs.Tree(), rootfs.Tree()
    first.host_tree(tmp_path)
    again.host_tree(tmp_path)
    assert first.digest() == again.digest()
    (tmp_path / "a").write_text("one, longer")
    changed = rootfs.Tree()
    changed.host_tree(tmp_path)
    assert changed.digest() != first.digest()
    generated = rootfs.Tree()
    generated.host_tree(tmp_path)
    generated.data("init", b"#!/bin/sh\n", 0o755)
    assert generated.digest() != changed.digest()


def test_staging_lays_out_files_links_and_modes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "tool").write_text("#!/bin/sh\n")
    (src / "tool").chmod(0o755)
    tree = rootfs.Tree()
    tree.host_tree(src)
    tree.data("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    tree.symlink("bin", "usr/bin")
    tree.directory("tmp", 0o1777)
    out = tmp_path / "out"
    tree.stage(out)
    staged = out / str(src)[1:] / "tool"
    assert staged.read_text() == "#!/bin/sh\n" and os.access(staged, os.X_OK)
    assert (out / "etc" / "passwd").read_bytes().startswith(b"root:")
    assert os.readlink(out / "bin") == "usr/bin"
    assert (out / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_the_disk_has_one_linux_partition_at_1_mib() -> None:
    mbr = rootfs._mbr(0x4BA6F4F3, 64 << 20)
    assert len(mbr) == 512 and mbr[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", mbr, 440)[0] == 0x4BA6F4F3
    kind, start, sectors = mbr[446 + 4], *struct.unpack_from("<II", mbr, 446 + 8)
    assert (kind, start * 512, sectors * 512) == (0x83, rootfs.PARTITION_OFFSET, 64 << 20)


def test_init_has_no_unfilled_placeholders() -> None:
    text = rootfs.init_script()
    assert re.findall(r"@[A-Z_]+@", text) == []
    assert "@" in rootfs.INIT and re.findall(r"@[A-Z_]+@", rootfs.INIT)
    assert "schedcpd --bus system" in text and rootfs.BUS_SOCKET in text
