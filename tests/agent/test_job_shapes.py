"""Short-job batch vs fork churn (issue 26, item 2), on real process trees, no daemon.

The benchmark's own sysbench-cpu and long-tail sessions (real sysbench, real
spinjob sets) and the make -j churn of tests/agent/workloads.py run while a
:class:`ScopeTracker` watches them for a few seconds, as the observation role
does; the structure rule must call the first two a short-job batch and the
make a fork churn.  Processes are the test's own and stopped at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedcp_agent.jobs import job_batches
from schedcp_agent.observe import Observer
from schedcp_agent.targets import Proc, Scope, ScopeTracker, Seen
from schedcp_bench.workload import Session
from schedcp_bench.workloads.longtail import LongTail
from schedcp_bench.workloads.sysbench_cpu import SysbenchCpu
from tests.agent.conftest import WORKLOADS
from tests.harness import Procs


def _watch(scope: Scope, seconds: float = 4.0) -> ScopeTracker:
    tracker = ScopeTracker(scope)
    end = time.monotonic() + seconds
    while True:
        tracker.snapshot()
        if time.monotonic() >= end:
            return tracker
        time.sleep(0.2)


def _shape(tracker: ScopeTracker) -> tuple[str, dict[str, list[int]], list[str]] | None:
    # _structure needs only the tracker (no daemon call).
    return Observer(None, tracker)._structure({})  # type: ignore[arg-type]


@pytest.fixture
def session_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "run"


def _stop(session: Session) -> None:
    session.stop()


@pytest.mark.skipif(shutil.which("sysbench") is None, reason="needs sysbench")
def test_sysbench_loop_is_a_serial_job_batch_not_churn(session_dir: Path) -> None:
    wl = SysbenchCpu()
    session = wl.start(session_dir, 1)
    try:
        time.sleep(0.5)
        tracker = _watch(Scope(match=session.match), 4.5)
    finally:
        _stop(session)
    shape = _shape(tracker)
    batches = job_batches(tracker)
    print(shape, batches)
    assert shape is not None and shape[0] == "job-batch", shape
    assert shape[1]["batch"] == [session.procs[0].pid]  # the driver, with its later jobs
    batch = batches[0]
    assert batch.command == "sysbench" and batch.serial and batch.jobs >= 2, batch
    assert "not fork churn" in shape[2][0]


def test_long_tail_sets_are_a_job_batch_not_churn(session_dir: Path,
                                                  tmp_path: Path) -> None:
    wl = LongTail()
    wl.prepare(tmp_path / "cache")
    session = wl.start(session_dir, 1)
    try:
        time.sleep(0.5)
        tracker = _watch(Scope(match=session.match))
    finally:
        _stop(session)
    shape = _shape(tracker)
    print(shape, job_batches(tracker))
    assert shape is not None and shape[0] == "job-batch", shape
    assert shape[1]["batch"] == [session.procs[0].pid]
    batch = job_batches(tracker)[0]
    assert batch.command == "spinjob" and batch.burst >= 4 and batch.in_bursts >= 0.5, batch


def test_make_j_is_still_fork_churn(tmp_path: Path) -> None:
    with Procs("schedcp-agent-shape-") as procs:
        procs.start([sys.executable, str(WORKLOADS), "churn", str(procs.dir), "30"])
        time.sleep(0.5)
        tracker = _watch(Scope(match=procs.regex))
    shape = _shape(tracker)
    print(shape, job_batches(tracker))
    assert shape is not None and shape[0] == "fork-churn", (shape, job_batches(tracker))


def _seen(pid: int, ppid: int, comm: str, start: int, frames: int, peak: int,
          at_start: bool = False, child_ticks: int = 0) -> Seen:
    proc = Proc(pid, ppid, comm, comm, start, ("/",), child_ticks=child_ticks)
    return Seen(proc, 0.0, 0.0, at_start, frames, peak)


def _tracker(seen: list[Seen], alive: list[int]) -> ScopeTracker:
    tr = ScopeTracker(Scope(pids=[1]))
    tr.seen = {(s.proc.pid, s.proc.start): s for s in seen}
    tr.current = {s.proc.pid: s.proc for s in seen if s.proc.pid in alive}
    tr.snapshots, tr.started, tr.ended = 10, 0.0, 2.0
    return tr


def test_job_shape_rules_on_well_defined_trees() -> None:
    driver = _seen(10, 1, "python3", 0, 10, 1, at_start=True)
    # One helper exec at a time, each gone before the next snapshot: churn.
    stream = [_seen(100 + i, 10, "sh", 20 * i, 1, 1) for i in range(8)]
    assert job_batches(_tracker([driver, *stream], [10]), ticks=100) == []
    # The same, each running through two snapshots or more: a serial job loop.
    serial = [_seen(100 + i, 10, "sysbench", 100 * i, 5, 1) for i in range(4)]
    got = job_batches(_tracker([driver, *serial], [10]), ticks=100)
    assert len(got) == 1 and got[0].serial and got[0].root == 10
    # ...unless each reaped children of its own (make runs whose sh helpers no
    # snapshot caught): those are build steps, not jobs.
    makes = [_seen(100 + i, 10, "make", 100 * i, 3, 1, child_ticks=6) for i in range(4)]
    assert job_batches(_tracker([driver, *makes], [10]), ticks=100) == []
    # A set side by side, spawned slowly (no burst), each running a while: a batch.
    slow = [_seen(100 + i, 10, "spinjob", 500 + 30 * i, 4, 6) for i in range(6)]
    assert job_batches(_tracker([driver, *slow], [10]), ticks=100)[0].peak == 6
    # Six started within two ticks of each other: a burst, whatever their lifetime.
    burst = [_seen(100 + i, 10, "spinjob", 500 + (i % 2), 1, 6) for i in range(6)]
    got = job_batches(_tracker([driver, *burst], [10]), ticks=100)
    assert len(got) == 1 and got[0].burst == 6 and got[0].in_bursts == 1.0
    # A burst of different commands that fork their own children: build helpers.
    mixed = [_seen(100 + i, 10, ("cc", "as", "ld", "sh")[i % 4], 500, 1, 6)
             for i in range(6)]
    kids = [_seen(200 + i, 100 + i, "cc1", 501, 1, 1) for i in range(6)]
    assert job_batches(_tracker([driver, *mixed, *kids], [10]), ticks=100) == []
