"""The core actuator's sysfs idioms on a FAKE tree (plain files in tmp), and adopted values.

What is proven: a ``selected`` file (``none [mq-deadline]``) is read as its
bracketed word and written as a word; a ``keyed`` file holds one line per key
and a change touches its own line only; a knob that ``resets`` a file beside
it has that file journaled before the write and put back right after its
own restore, whichever entry the journal holds first; ``adopt`` journals a
value the kernel copied (a forked child's) with the parent's prior.  The
real kernel behaviour (a scheduler switch resetting nr_requests) is proven
on a loop device in tests/io.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schedcpd.actuator import RESET_MARK, KnobActuator
from schedcpd.journal import Journal
from schedcpd.knobs import BadDeclaration, Knob, KnobChange, KnobValueRefused
from tests.boundary.conftest import IOPRIO


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    q = tmp_path / "FAKE-sys" / "sda" / "queue"
    q.mkdir(parents=True)
    (q / "scheduler").write_text("none [mq-deadline] kyber\n")
    (q / "nr_requests").write_text("64\n")
    (q / "throttle").write_text("8:0 100\n7:3 200\n")
    return q


def _act(journal: Journal, q: Path) -> KnobActuator:
    return KnobActuator(journal, "fake", [
        Knob("sched", "file", paths=(f"{q}/scheduler",), format="selected",
             allowed=("none", "mq-deadline", "kyber"), resets=("nr_requests",)),
        Knob("nr", "file", paths=(f"{q}/nr_requests",), type="int", minimum=4, maximum=4096),
        Knob("limit", "file", paths=(f"{q}/throttle",), format="keyed",
             regex=r"[0-9]+:[0-9]+ [0-9]+")])


def _kernel_switch(q: Path, word: str, depth: str) -> None:
    """What the kernel shows after a switch (a FAKE file does not react by itself)."""
    words = ["none", "mq-deadline", "kyber"]
    (q / "scheduler").write_text(" ".join(f"[{w}]" if w == word else w for w in words))
    (q / "nr_requests").write_text(depth)


def test_a_selected_file_is_its_bracketed_word(journal: Journal, queue: Path) -> None:
    act = _act(journal, queue)
    assert act.read("sched", str(queue / "scheduler")) == "mq-deadline"
    act.apply("o", [KnobChange("sched", str(queue / "scheduler"), "kyber")])
    assert (queue / "scheduler").read_text() == "kyber"  # a word is what the kernel takes
    entry = journal.entries(owner="o", subsystem="fake")[0]  # newest first
    assert (entry.kind, entry.prior, entry.new) == ("sched", "mq-deadline", "kyber")


def test_a_keyed_file_changes_one_line(journal: Journal, queue: Path) -> None:
    act = _act(journal, queue)
    path = str(queue / "throttle")
    assert act.read("limit", path, key="7:3") == "7:3 200"
    assert act.read("limit", path, key="9:9") == "9:9 0"  # no line: the "not set" value
    with pytest.raises(KnobValueRefused):
        act.apply("o", [KnobChange("limit", path, "7:3")])
    [out] = act.apply("o", [KnobChange("limit", path, "9:9  5")])
    assert (out["before"], out["status"]) == ("9:9 0", "applied")
    (queue / "throttle").write_text("8:0 100\n7:3 200\n9:9 5\n")  # the kernel adds the line
    assert act.overridden() == []
    act.restore("o")
    assert (queue / "throttle").read_text() == "9:9 0"


def test_a_reset_file_is_journaled_first_and_put_back_after_its_knob(
        journal: Journal, queue: Path) -> None:
    act = _act(journal, queue)
    (queue / "nr_requests").write_text("32\n")  # an administrator's depth
    act.apply("o", [KnobChange("sched", str(queue / "scheduler"), "kyber", key="s")])
    nr_entry, sched_entry = sorted(journal.entries(owner="o"), key=lambda e: e.id)
    assert (nr_entry.kind, nr_entry.key, nr_entry.prior) == ("nr", f"s{RESET_MARK}nr_requests",
                                                             "32")
    assert sched_entry.kind == "sched" and sched_entry.id > nr_entry.id
    _kernel_switch(queue, "kyber", "256")
    journal.mark_applied(nr_entry.id, new="256")  # what the actuator reads back on a kernel
    act.apply("o", [KnobChange("nr", str(queue / "nr_requests"), 128)])
    # The depth we set after the switch is ours: the reset entry is not "overridden".
    assert act.overridden() == []
    report = act.restore("o")
    assert [e["kind"] for e in report["entries"]] == ["nr", "sched", "nr"]
    assert report["summary"] == {"restored": 3}
    assert (queue / "nr_requests").read_text() == "32"
    assert act.read("sched", str(queue / "scheduler")) == "mq-deadline"


def test_a_reset_file_someone_else_changed_is_reported_not_forced(
        journal: Journal, queue: Path) -> None:
    act = _act(journal, queue)
    act.apply("o", [KnobChange("sched", str(queue / "scheduler"), "none", key="s")])
    nr_entry = min(journal.entries(owner="o"), key=lambda e: e.id)
    journal.mark_applied(nr_entry.id, new="256")
    (queue / "scheduler").write_text("[none] mq-deadline")
    (queue / "nr_requests").write_text("99")  # the administrator, after us
    outcomes = {e["kind"]: e["outcome"] for e in act.restore("o")["entries"]}
    assert outcomes == {"sched": "restored", "nr": "overridden"}


def test_a_declaration_of_formats_and_resets_is_checked() -> None:
    with pytest.raises(BadDeclaration):
        Knob("x", "syscall", syscall="ioprio_set", format="keyed")
    with pytest.raises(BadDeclaration):
        Knob("x", "file", paths=("/a",), format="csv")
    with pytest.raises(BadDeclaration):
        Knob("x", "file", paths=("/a",), resets=("../etc/passwd",))


def test_an_inherited_value_is_adopted_with_the_parents_prior(
        journal: Journal, thread_target: tuple[int, str]) -> None:
    _, target = thread_target
    act = KnobActuator(journal, "fakeio", [IOPRIO])
    live = act.read("ioprio", target)
    assert act.adopt("o", [KnobChange("ioprio", target, live + 1, meta={"prior": 0})]) == []
    [entry_id] = act.adopt("o", [KnobChange("ioprio", target, live, key="k",
                                            meta={"prior": 3 << 13})])
    entry = journal.get(entry_id)
    assert (entry.state, entry.prior, entry.new, entry.target) == (
        "applied", 3 << 13, live, target)
