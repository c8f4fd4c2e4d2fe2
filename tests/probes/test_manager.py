"""ProbeManager: catalogue, argument checks, limits, and detaching on every exit path.

Real BPF throughout; after each test nothing of ours may stay loaded
(checked with bpftool).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schedcpd.errors import Busy, InvalidArgument, NotFound, NotSupported
from schedcpd.probes import PROBES, ProbeManager
from tests.harness import poll
from tests.probes.conftest import loaded_schedcp_objects, wait_until_loaded, wait_until_unloaded


@pytest.fixture
async def manager(bpf_dir: Path) -> AsyncIterator[ProbeManager]:
    mgr = ProbeManager(bpf_dir, max_concurrent=4, max_seconds=1.0, per_caller_per_minute=6)
    try:
        yield mgr
    finally:
        await mgr.close()
        assert wait_until_unloaded() == []


@pytest.fixture(autouse=True)
def nothing_loaded_before(bpf_dir: Path) -> None:
    assert wait_until_unloaded() == [], "schedcp BPF objects left by an earlier test"


async def test_catalogue_lists_every_probe_available(manager: ProbeManager) -> None:
    entries = manager.catalogue()
    assert [e["name"] for e in entries] == list(PROBES)
    for entry in entries:
        assert entry["available"], entry
        assert entry["description"]
        assert {p["name"] for p in entry["parameters"]} == {"seconds", "pid"}


async def test_catalogue_says_why_objects_are_missing(tmp_path: Path) -> None:
    mgr = ProbeManager(tmp_path)
    for entry in mgr.catalogue():
        assert entry["available"] is False
        assert "make -C bpf" in entry["reason"]
    with pytest.raises(NotSupported):
        await mgr.run("runqlat", 1, "c")


async def test_objects_others_could_replace_are_refused(bpf_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    for spec in PROBES.values():
        shutil.copy(bpf_dir / spec.object_file, shared / spec.object_file)
    shared.chmod(0o777)
    mgr = ProbeManager(shared)
    for entry in mgr.catalogue():
        assert entry["available"] is False
        assert "writable only by root" in entry["reason"]
    with pytest.raises(NotSupported):
        await mgr.run("runqlat", 1, "c")
    shared.chmod(0o755)
    (shared / "runqlat.bpf.o").chmod(0o666)
    assert [e["available"] for e in mgr.catalogue()] == [False, True, True]


async def test_every_probe_runs_and_returns_json(manager: ProbeManager) -> None:
    import json

    for name in PROBES:
        result = await manager.run(name, 0.3, "caller", pid=None)
        assert result["probe"] == name
        assert result["capped"] is False
        assert 0.2 < result["seconds"] < 30
        assert result["processes"], result
        assert len(json.dumps(result)) < 4096
    assert wait_until_unloaded() == []


async def test_unknown_probe_and_bad_arguments(manager: ProbeManager) -> None:
    with pytest.raises(NotFound):
        await manager.run("kprobe:anything", 1, "c")
    with pytest.raises(NotFound):
        await manager.run("/tmp/evil.bpf.o", 1, "c")
    for seconds in (0, -1, math.nan, math.inf, "3", True, None):
        with pytest.raises(InvalidArgument):
            await manager.run("runqlat", seconds, "c")  # type: ignore[arg-type]
    for pid in (-1, 2**22 + 12345, "1", True):
        with pytest.raises(InvalidArgument):
            await manager.run("runqlat", 1, "c", pid=pid)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await manager.run("runqlat", 1, "")
    # A thread id is refused with the process id to use instead.
    ready = threading.Event()
    stop = threading.Event()
    tids: list[int] = []

    def worker() -> None:
        tids.append(threading.get_native_id())
        ready.set()
        stop.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        ready.wait()
        with pytest.raises(InvalidArgument, match=str(os.getpid())):
            await manager.run("runqlat", 1, "c", pid=tids[0])
    finally:
        stop.set()
        thread.join()


async def test_ten_minute_request_is_capped(manager: ProbeManager) -> None:
    result = await manager.run("cswitch", 600, "c")
    assert result["capped"] is True
    assert result["requested_seconds"] == 600
    assert result["seconds"] < 30  # 1 s cap (plus scheduling slack), not 600


async def test_default_cap_is_a_minute(bpf_dir: Path) -> None:
    mgr = ProbeManager(bpf_dir)
    assert mgr.max_seconds == 60.0
    task = asyncio.create_task(mgr.run("cswitch", 600, "c"))
    assert await asyncio.to_thread(wait_until_loaded)
    await mgr.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wait_until_unloaded() == []


async def test_twenty_concurrent_requests_past_the_limit_get_busy(
    manager: ProbeManager,
) -> None:
    results = await asyncio.gather(
        *(manager.run("cswitch", 0.5, f"caller{i}") for i in range(20)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, dict)]
    busy = [r for r in results if isinstance(r, Busy)]
    assert len(ok) == manager.max_concurrent
    assert len(busy) == 20 - manager.max_concurrent
    assert "limit is 4" in str(busy[0])
    # The slots are free again once those probes ended.
    assert (await manager.run("cswitch", 0.1, "later"))["probe"] == "cswitch"


async def test_per_caller_rate_limit(bpf_dir: Path) -> None:
    mgr = ProbeManager(bpf_dir, max_concurrent=10, max_seconds=1, per_caller_per_minute=2)
    try:
        await mgr.run("cswitch", 0.1, "agent")
        await mgr.run("cswitch", 0.1, "agent")
        with pytest.raises(Busy, match="last minute"):
            await mgr.run("cswitch", 0.1, "agent")
        # Another caller has its own budget.
        await mgr.run("cswitch", 0.1, "admin")
        # A rate key shared by several connections (one uid) is one budget.
        await mgr.run("cswitch", 0.1, ":1.7", rate_key="uid:1000")
        await mgr.run("cswitch", 0.1, ":1.8", rate_key="uid:1000")
        with pytest.raises(Busy, match="uid:1000"):
            await mgr.run("cswitch", 0.1, ":1.9", rate_key="uid:1000")
    finally:
        await mgr.close()


async def test_cancelling_the_task_detaches_at_once(manager: ProbeManager) -> None:
    mgr = ProbeManager(manager.bpf_dir, max_seconds=60)
    task = asyncio.create_task(mgr.run("runqlat", 60, "c"))
    expected = {"prog:schedcp_rq_sw", "prog:schedcp_rq_wake", "prog:schedcp_rq_wnew"}
    try:
        progs = await asyncio.to_thread(wait_until_loaded, 10.0, expected)
        assert sorted(progs) == sorted(expected)
    finally:
        task.cancel()  # also when the check failed: nothing may stay attached
    with pytest.raises(asyncio.CancelledError):
        await task
    assert mgr.active() == []
    assert wait_until_unloaded() == []


async def test_cancel_while_loading_still_detaches(manager: ProbeManager) -> None:
    # Cancel before the worker thread has finished loading: the object is
    # freed when the thread returns, and close() waits for that.
    task = asyncio.create_task(manager.run("offcpu", 1, "c"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await manager.close()
    assert manager.active() == []
    assert wait_until_unloaded() == []


async def test_cancel_caller_detaches_only_that_caller(bpf_dir: Path) -> None:
    mgr = ProbeManager(bpf_dir, max_seconds=60)
    gone = asyncio.create_task(mgr.run("runqlat", 60, "client-gone"))
    stays = asyncio.create_task(mgr.run("cswitch", 60, "client-stays"))
    try:
        while len(mgr.active()) < 2 or len(await asyncio.to_thread(loaded_progs)) < 5:
            await asyncio.sleep(0.05)
        assert await mgr.cancel_caller("client-gone") == 1
        assert gone.cancelled()
        assert not stays.done()
        assert [r["caller"] for r in mgr.active()] == ["client-stays"]
        left = await asyncio.to_thread(wait_for_progs, {"schedcp_cs_sw", "schedcp_cs_mig"})
        assert left == {"schedcp_cs_sw", "schedcp_cs_mig"}
    finally:
        await mgr.close()  # daemon stop
    assert stays.cancelled()
    assert wait_until_unloaded() == []
    with pytest.raises(Busy, match="shutting down"):
        await mgr.run("cswitch", 1, "late")


def loaded_progs() -> set[str]:
    return {n.split(":", 1)[1] for n in loaded_schedcp_objects() if n.startswith("prog:")}


def wait_for_progs(expected: set[str], timeout: float = 10.0) -> set[str]:
    return poll(loaded_progs, lambda progs: progs == expected, timeout, 0.1)


def test_nothing_left_after_a_normal_run(bpf_dir: Path) -> None:
    # The same through a fresh interpreter: a daemon-like process that runs
    # a probe and exits leaves nothing loaded.
    code = (
        "import asyncio\nfrom pathlib import Path\n"
        "from schedcpd.probes import ProbeManager\n"
        f"m = ProbeManager(Path({str(bpf_dir)!r}))\n"
        "r = asyncio.run(m.run('offcpu', 0.2, 'x'))\n"
        "print(r['probe'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "offcpu"
    assert wait_until_unloaded() == []


def test_nothing_left_when_the_daemon_is_killed(bpf_dir: Path) -> None:
    # No pinning: SIGKILL closes the daemon's fds and the kernel drops it all.
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from schedcpd.probes import PROBES, ProbeSession\n"
        f"s = ProbeSession(PROBES['runqlat'], Path({str(bpf_dir)!r}))\n"
        "s.start()\n"
        "print('attached', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "attached"
        assert len(loaded_progs()) == 3
    finally:
        proc.kill()
        proc.wait()
    assert wait_until_unloaded() == []


async def test_a_corrupt_object_is_reported_not_loaded(bpf_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir(mode=0o755)
    for spec in PROBES.values():
        shutil.copy(bpf_dir / spec.object_file, broken / spec.object_file)
    (broken / "runqlat.bpf.o").write_bytes(b"\x7fELF not really")
    mgr = ProbeManager(broken)
    with pytest.raises(NotSupported, match="could not be attached"):
        await mgr.run("runqlat", 1, "c")
    assert mgr.active() == []
    assert (await mgr.run("cswitch", 0.1, "c"))["probe"] == "cswitch"
