"""Catalogue readers: histogram buckets, quantiles, and layout checks against real objects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from schedcpd.probes import PROBES
from schedcpd.probes.bpfobject import BpfObject
from schedcpd.probes.catalogue import _OC_PROC, CONFIG, _histogram, _quantiles, _unpack_rows
from schedcpd.probes.libbpf import LibbpfError


def test_histogram_buckets_follow_the_bpf_slots() -> None:
    # Slot 0 is [0, 1) us, slot k is [2^(k-1), 2^k) us (schedcp_slot in bpf/).
    counts = [3, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 2] + [0] * 20
    assert _histogram(counts) == [
        {"lo_us": 0, "hi_us": 1, "count": 3},
        {"lo_us": 2, "hi_us": 4, "count": 5},
        {"lo_us": 1024, "hi_us": 2048, "count": 2},
    ]


def test_quantiles_are_bucket_upper_bounds() -> None:
    counts = [0] * 32
    counts[3] = 90  # [4, 8) us
    counts[10] = 9  # [512, 1024) us
    counts[20] = 1  # [512 ms, 1 s)
    assert _quantiles(counts) == {"p50": 8, "p90": 8, "p99": 1024}
    assert _quantiles([0] * 32) == {}


def test_layout_mismatches_are_refused_not_misread(bpf_dir: Path) -> None:
    spec = PROBES["runqlat"]
    with BpfObject(bpf_dir / spec.object_file, spec.object_name) as obj:
        with pytest.raises(LibbpfError, match="make -C bpf"):
            obj.load(b"\0" * 12)  # .rodata config is 8 bytes
    with BpfObject(bpf_dir / spec.object_file, spec.object_name) as obj:
        obj.load(b"\0" * 8)
        with pytest.raises(LibbpfError, match="expected 48"):
            _unpack_rows(obj.map("schedcp_rqprocs"), _OC_PROC)
        with pytest.raises(LibbpfError):
            obj.map("no_such_map")


def test_objects_build_from_scratch_against_a_generated_vmlinux_h(
        bpf_dir: Path, tmp_path: Path) -> None:
    # A clean build: bpftool dumps vmlinux.h from this kernel's BTF, clang
    # compiles every catalogue probe against it, and each object loads.
    out = tmp_path / "build"
    root = Path(__file__).resolve().parents[2]
    subprocess.run(["make", "-s", "-C", str(root / "bpf"), f"OUT={out}"], check=True)
    header = (out / "vmlinux.h").read_text()
    assert "struct task_struct {" in header
    assert sorted(p.name for p in out.glob("*.bpf.o")) == sorted(
        spec.object_file for spec in PROBES.values())
    for spec in PROBES.values():
        with BpfObject(out / spec.object_file, spec.object_name) as obj:
            obj.load(CONFIG.pack(0, 1))
            assert all(name.startswith("schedcp_") for name in obj.program_names)
            assert obj.program_names
