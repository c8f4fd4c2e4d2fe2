"""The core actuator on a FAKE sysfs tree (plain files in tmp) and on a real thread's ioprio.

What is proven: changes are checked against the declarations (patterns after
resolving symlinks and ``..``, types and ranges) before anything is written;
the old value is journaled before the write; restore is exact; a value
someone else changed is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schedcpd.actuator import KnobActuator, TargetGone
from schedcpd.journal import Journal
from schedcpd.knobs import BadDeclaration, Knob, KnobChange, KnobNotDeclared, KnobValueRefused
from tests.boundary.conftest import IOPRIO


def actuator(journal: Journal, fake: Path) -> KnobActuator:
    return KnobActuator(journal, "fakeio", [
        Knob("read_ahead_kb", "file", paths=(f"{fake}/block/*/queue/read_ahead_kb",),
             type="int", minimum=0, maximum=65536)])


def test_a_declared_change_is_journaled_written_and_restored_exactly(
        journal: Journal, fake: Path) -> None:
    act = actuator(journal, fake)
    path = fake / "block/sda/queue/read_ahead_kb"
    out = act.apply("d1", [KnobChange("read_ahead_kb", str(path), 4096, key="ra:sda")])
    assert [o["status"] for o in out] == ["applied"]
    assert path.read_text() == "4096"
    (entry,) = journal.entries(owner="d1")
    assert (entry.kind, entry.key, entry.prior, entry.new, entry.state, entry.target) == (
        "read_ahead_kb", "ra:sda", "128", "4096", "applied", str(path))
    report = act.restore("d1")
    assert report["summary"] == {"restored": 1}
    assert path.read_text() == "128"


def test_outside_the_declarations_nothing_of_the_set_is_written(
        journal: Journal, fake: Path) -> None:
    act = actuator(journal, fake)
    good = KnobChange("read_ahead_kb", str(fake / "block/sda/queue/read_ahead_kb"), 512)
    for bad, error in (
            (KnobChange("scheduler", str(fake / "block/sda/queue/scheduler"), "none"),
             KnobNotDeclared),
            (KnobChange("read_ahead_kb", str(fake / "kernel/sched_autogroup_enabled"), 0),
             KnobNotDeclared),
            (KnobChange("read_ahead_kb",
                        f"{fake}/block/sda/queue/../../../kernel/sched_autogroup_enabled", 0),
             KnobNotDeclared),
            (KnobChange("read_ahead_kb", "/proc/sys/kernel/sched_autogroup_enabled", 0),
             KnobNotDeclared),
            (KnobChange("read_ahead_kb", str(fake / "block/sdb/queue/read_ahead_kb"), 10**9),
             KnobValueRefused),
            (KnobChange("read_ahead_kb", str(fake / "block/sdb/queue/read_ahead_kb"), "x"),
             KnobValueRefused)):
        with pytest.raises(error):
            act.apply("d2", [good, bad])
    assert (fake / "block/sda/queue/read_ahead_kb").read_text() == "128\n"
    assert (fake / "kernel/sched_autogroup_enabled").read_text() == "1\n"
    assert journal.entries() == []


def test_a_link_to_a_declared_file_is_followed_and_one_to_another_refused(
        journal: Journal, fake: Path, tmp_path: Path) -> None:
    act = actuator(journal, fake)
    inside = tmp_path / "link-in"
    inside.symlink_to(fake / "block/sdb/queue/read_ahead_kb")
    act.apply("d3", [KnobChange("read_ahead_kb", str(inside), 64)])
    assert (fake / "block/sdb/queue/read_ahead_kb").read_text() == "64"
    assert journal.entries(owner="d3")[0].target == str(fake / "block/sdb/queue/read_ahead_kb")
    outside = tmp_path / "link-out"
    outside.symlink_to(fake / "kernel/sched_autogroup_enabled")
    with pytest.raises(KnobNotDeclared):
        act.apply("d3", [KnobChange("read_ahead_kb", str(outside), 0)])
    assert (fake / "kernel/sched_autogroup_enabled").read_text() == "1\n"
    act.restore(None)
    assert (fake / "block/sdb/queue/read_ahead_kb").read_text() == "128"


def test_a_deep_pattern_covers_a_tree_at_any_depth_and_nothing_beside_it(
        journal: Journal, tmp_path: Path) -> None:
    cg = tmp_path / "FAKE-cgroup"
    (cg / "a" / "b").mkdir(parents=True)
    for d in (cg, cg / "a", cg / "a" / "b"):
        (d / "cpu.uclamp.min").write_text("0.00\n")
        (d / "cpu.max").write_text("max 100000\n")
    act = KnobActuator(journal, "fakecg", [Knob("cg", "file", paths=(f"{cg}/**/cpu.uclamp.min",),
                                                regex=r"max|[0-9.]+")])
    act.apply("d6", [KnobChange("cg", str(cg / "a/b/cpu.uclamp.min"), "12.5"),
                     KnobChange("cg", str(cg / "cpu.uclamp.min"), "1")])
    with pytest.raises(KnobNotDeclared):
        act.apply("d6", [KnobChange("cg", str(cg / "a/cpu.max"), "max")])
    assert act.restore("d6")["summary"] == {"restored": 2}
    assert (cg / "a/b/cpu.uclamp.min").read_text() == "0.00"


def test_a_value_changed_by_someone_else_is_left_alone(journal: Journal, fake: Path) -> None:
    act = actuator(journal, fake)
    path = fake / "block/sda/queue/read_ahead_kb"
    act.apply("d4", [KnobChange("read_ahead_kb", str(path), 256)])
    path.write_text("999\n")
    assert [o["live"] for o in act.overridden()] == ["999"]
    assert act.restore("d4")["summary"] == {}  # overridden entries are no longer open
    assert path.read_text() == "999\n"


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(BadDeclaration):
        Knob("x", "file", paths=("relative/path",))
    with pytest.raises(BadDeclaration):
        Knob("x", "file", paths=("/sys/*/**/x",))  # ** only after a literal prefix
    with pytest.raises(BadDeclaration):
        Knob("x", "file", paths=("/sys/**/a/**/x",))
    with pytest.raises(BadDeclaration):
        Knob("x", "syscall")
    with pytest.raises(BadDeclaration):
        Knob.from_dict({"name": "x", "kind": "file", "paths": ["/a"], "sneaky": 1})


def test_ioprio_of_a_real_thread_through_the_syscall_table(
        journal: Journal, thread_target: tuple[int, str]) -> None:
    pid, target = thread_target
    act = KnobActuator(journal, "fakeio", [IOPRIO])
    before = act.read("ioprio", target)
    idle = 3 << 13
    act.apply("d5", [KnobChange("ioprio", target, idle)])
    assert os.popen(f"ionice -p {pid}").read().strip() == "idle"
    assert act.restore("d5")["summary"] == {"restored": 1}
    assert act.read("ioprio", target) == before
    start = int(target.split(":")[1])
    with pytest.raises(TargetGone):
        act.read("ioprio", f"{pid}:{start + 1}")  # another incarnation
