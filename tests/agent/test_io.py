"""The offline planner on I/O workloads, through the real CLI and the real daemon.

Real fio processes on a loop device of the test's own (a file in the test's
tmp dir, removed after; vda's settings are never touched): a 4 KiB random
reader at queue depth 1 beside a 1 MiB direct sequential writer.  The agent
runs as the unprivileged test user; it learns the targets' I/O from the
daemon's summary (``wr_kbs``, ``d_frac``, ``blkio``), picks the io or the
multi-subsystem policy and binds its groups to the pids.  Whether the
knobs reached the targets is sampled here from the kernel (ioprio_get,
/proc/<pid>/timerslack_ns); ``--revert-at-end`` must put them back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.io import ioprio
from plugins.io.sandbox import ScratchDevice, stop
from tests.agent.conftest import Sampler, agent_cwd
from tests.harness import Procs, run_as, wait_until, wait_workers_ready

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(subprocess.run(["which", "fio"], capture_output=True)
                                 .returncode != 0, reason="fio is not installed")]

_DEFAULT = 0  # ioprio "none": the kernel derives it from nice


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[ScratchDevice]:
    """A 64 MiB loop device (direct I/O to its file), filled so reads reach the disk."""
    dev = ScratchDevice(64, parent=tmp_path)
    try:
        subprocess.run(["fio", "--name=fill", f"--filename={dev.path}", "--rw=write",
                        "--bs=1M", "--direct=1", "--size=64M"], check=True,
                       capture_output=True, timeout=120)
        yield dev
    finally:
        dev.close()


@pytest.fixture
def fio_jobs(loop: ScratchDevice) -> Iterator[list[subprocess.Popen[bytes]]]:
    """fio processes on ``loop``; killed (with their job processes) before it is removed."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        jobs = [pid for proc in started for pid in ioprio.Selector([], [proc.pid]).scan()]
        for proc in started:
            stop(proc)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in jobs),
                   timeout=60)


def _fio(started: list[subprocess.Popen[bytes]], dev: ScratchDevice, *job: str
         ) -> tuple[int, int]:
    """Start one fio job on ``dev``; (fio's pid, its job process's pid)."""
    proc = subprocess.Popen(["fio", f"--filename={dev.path}", "--direct=1", "--time_based=1",
                             "--runtime=300", *job], stdout=subprocess.DEVNULL)
    started.append(proc)
    wait_until(lambda: len(ioprio.Selector([], [proc.pid]).scan()) >= 2, timeout=60)
    return proc.pid, ioprio.Selector([], [proc.pid]).scan()[1]


def _reader(started: list[subprocess.Popen[bytes]], dev: ScratchDevice) -> tuple[int, int]:
    return _fio(started, dev, "--name=reader", "--rw=randread", "--bs=4k", "--iodepth=1",
                "--ioengine=psync")


_DATABASE = """
import mmap, os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
blocks = os.lseek(fd, 0, os.SEEK_END) // 4096
buf = mmap.mmap(-1, 4096)
while True:
    os.preadv(fd, [buf], random.randrange(blocks) * 4096)
    done = time.thread_time() + 0.0005
    while time.thread_time() < done:
        pass
"""


def _database_reader(started: list[subprocess.Popen[bytes]], dev: ScratchDevice
                     ) -> tuple[int, int]:
    """A reader that works on each block it reads (0.5 ms of its own CPU, as a query would).

    A bare psync reader needs so little CPU that whether it ever waited for one
    beside the hogs was chance (EEVDF often runs a short waker at once: one CI
    run measured 0.008 s/s of run-queue wait, a passing run 0.13).  With half a
    millisecond of work per read it is runnable long enough to queue behind
    the hogs (0.37-0.80 s/s in four runs at load 5-7), and it still waits on
    the disk for every read (O_DIRECT, depth 1; in D 24-53 % of samples).
    (fio's thinktime_spin would do it, but fio 3.33 here spins far too long.)
    """
    proc = subprocess.Popen([sys.executable, "-c", _DATABASE, str(dev.path)])
    started.append(proc)
    return proc.pid, proc.pid


def _writer(started: list[subprocess.Popen[bytes]], dev: ScratchDevice) -> tuple[int, int]:
    return _fio(started, dev, "--name=writer", "--rw=write", "--bs=1M", "--iodepth=16",
                "--ioengine=libaio")


def _ioprio_and_slack(pid: int) -> tuple[int, int]:
    return ioprio.get(pid), int(Path(f"/proc/{pid}/timerslack_ns").read_text())


def ioprio_watcher(pids: list[int]) -> Sampler[tuple[int, int]]:
    """Samples the I/O priority (and timer slack) of ``pids`` while the agent runs."""
    return Sampler(lambda: pids, _ioprio_and_slack, (OSError, ioprio.TaskGone, ValueError))


def _optimize(address: str, uid: int, pids: list[int], *extra: str) -> dict:
    argv = [sys.executable, "-m", "schedcp_agent", "optimize", "--bus", address, "--json",
            "--observe-seconds", "3", "--revert-at-end", "--max-iterations", "1",
            *[a for p in pids for a in ("--pid", str(p))], *extra]
    out = run_as(uid, argv, cwd=agent_cwd(), timeout=200)
    assert out.stdout.startswith("{"), out.stderr[-3000:]
    return json.loads(out.stdout)


def _said(report: dict) -> str:
    att = report["attempts"][0] if report["attempts"] else {}
    return (f"status={report['status']} shape={report['saw']['shape']} "
            f"io={report['saw'].get('io')} evidence={report['saw']['evidence']} "
            f"base={att.get('candidate', {}).get('base')} "
            f"execution={att.get('execution')} findings={att.get('findings')}")


def test_reads_beside_a_bulk_writer_get_io_protect_reads(agent_daemon, loop: ScratchDevice,
                                                         fio_jobs: list, agent_uid: int) -> None:
    writer, writer_job = _writer(fio_jobs, loop)
    reader, reader_job = _reader(fio_jobs, loop)
    with ioprio_watcher([writer_job, reader_job]) as watch:
        report = _optimize(agent_daemon.address, agent_uid, [writer, reader])
    print(_said(report))
    saw = report["saw"]
    assert saw["shape"] == "io-reads-beside-writer", _said(report)
    assert saw["goal"] == "latency" and saw["goal_source"] == "inferred"
    assert saw["roles"]["bulk-writer"] == [writer_job], saw["roles"]
    assert reader_job in saw["roles"]["reader"], saw["roles"]
    assert saw["io"][str(writer_job)]["writer"] and saw["io"][str(reader_job)]["waits_on_io"]
    first = report["attempts"][0]
    assert first["candidate"]["base"] == "io-protect-reads", _said(report)
    doc = tomllib.loads(first["candidate"]["text"])
    assert [g["match"] for g in doc["group"]] == [{"pids": [writer_job]}], doc
    assert "device" not in doc  # no --io-device: machine-wide settings are left alone
    assert any("--io-device" in a for a in report["advice"]), report["advice"]
    if first["execution"].get("deployment"):
        assert any(prio >> 13 == 3 for prio, _s in watch.seen[writer_job]), watch.seen
    # The reader was never lowered; everything is back as it was.
    assert all(prio >> 13 != 3 for prio, _s in watch.seen[reader_job]), watch.seen
    assert ioprio.get(writer_job) == _DEFAULT and ioprio.get(reader_job) == _DEFAULT


def test_reads_waiting_for_cpu_and_disk_get_the_database_policy(
        agent_daemon, loop: ScratchDevice, fio_jobs: list, procs: Procs, agent_uid: int) -> None:
    hogs = [procs.worker("spin") for _ in range(3)]
    wait_workers_ready(hogs)
    writer, _writer_job = _writer(fio_jobs, loop)
    reader, reader_job = _database_reader(fio_jobs, loop)
    slack = int(Path(f"/proc/{reader_job}/timerslack_ns").read_text())
    with ioprio_watcher([reader_job]) as watch:
        report = _optimize(agent_daemon.address, agent_uid,
                           [writer, reader, *(h.pid for h in hogs)], "--goal", "latency")
    print(_said(report))
    saw = report["saw"]
    assert saw["shape"] == "latency-beside-cpu-and-io", _said(report)
    assert saw["roles"]["database"] == [reader_job], saw["roles"]
    assert sorted(saw["roles"]["batch"]) == sorted(h.pid for h in hogs), saw["roles"]
    first = report["attempts"][0]
    assert first["candidate"]["base"] == "database", _said(report)
    doc = tomllib.loads(first["candidate"]["text"])
    assert doc["policy"]["subsystems"] == ["scheduler", "io"], doc
    assert [g["match"] for g in doc["scheduler"]["group"]] == [{"pid": [reader_job]}], doc
    assert [g["match"] for g in doc["io"]["group"]] == [{"pids": [reader_job]}], doc
    if first["execution"].get("deployment"):
        # Both parts reached the reader: be/0 from io, 1 ns timer slack from the scheduler.
        assert (ioprio.value("be", 0), 1) in watch.seen[reader_job], watch.seen
    assert ioprio.get(reader_job) == _DEFAULT
    assert int(Path(f"/proc/{reader_job}/timerslack_ns").read_text()) == slack
