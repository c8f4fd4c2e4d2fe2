"""The T3 (multi-subsystem) workloads: fio on a loop device of the session's own.

Each session makes a loop device over a file in its run directory (direct
I/O to the file, :class:`plugins.io.sandbox.ScratchDevice`), fills it so
reads reach the disk, and removes it when the session stops; the machine's
own disks' settings are never touched (the io policies' ``[[device]]``
tables are aimed at the loop device: ``session.extra["io_device"]``, which
the policy arms and the agent arm's ``--io-device`` use).  The I/O still
lands on the disk that holds the run directory, through its own queue.

- ``fio-read-beside-writer``: a 4 KiB random reader at queue depth 1 beside
  a 1 MiB direct sequential writer at queue depth 16 (issue 21's workload).
- ``fio-mixed-service``: a service doing 70 % random 4 KiB reads and 30 %
  writes at queue depth 4, at a fixed rate, beside the same writer.
- ``fio-read-cpu-io``: the random reader beside the writer *and* a CPU hog
  with one spinning thread per CPU: the reader waits both on the disk and
  for a CPU (the database policy's case).

Every fio job runs for the whole session (:mod:`schedcp_bench.workloads.fio_stream`
logs one record per second), so the pids a policy binds never change.
Roles: ``reader`` (also ``database`` and ``latency``: the same process for
the multi-subsystem and the scheduler policies), ``bulk-writer`` (also
``copy``, io-batch-copy's group), ``batch`` (the hog).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from plugins.io.ioprio import Selector
from plugins.io.sandbox import SandboxError, ScratchDevice
from schedcp_agent.targets import process_table
from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    good,
    hog_figures,
    median,
    ncpu,
    python_argv,
    python_env,
    read_log,
)

SIZE_MIB = 256
READER = ["--rw=randread", "--bs=4k", "--iodepth=1", "--ioengine=psync"]
WRITER = ["--rw=write", "--bs=1M", "--iodepth=16", "--ioengine=libaio"]
SERVICE = ["--rw=randrw", "--rwmixread=70", "--bs=4k", "--iodepth=4", "--ioengine=libaio",
           "--rate_iops=300,150"]


@dataclass
class LoopSession(Session):
    """A session that owns a loop device, removed after its processes are stopped."""

    device: ScratchDevice | None = None

    def stop(self) -> None:
        """Kill the session's processes, wait until their fio jobs are gone, remove the device.

        fio's job processes run in sessions of their own (outside the
        process group the session kills), so every descendant is killed by
        pid first; a job finishing its in-flight I/O would keep the loop
        device busy, hence the wait.
        """
        for proc in self.procs:  # fio's job processes start sessions of their own
            for pid in reversed(Selector([], [proc.pid]).scan()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        super().stop()
        deadline = time.monotonic() + 30
        while self.device is not None and time.monotonic() < deadline and any(
                p.pid != os.getpid() and re.search(self.match, p.cmdline)
                for p in process_table().values()):
            time.sleep(0.1)
        if self.device is not None:
            self.device.close()
            self.device = None


class IoWorkload(BenchWorkload):
    """Common part: the loop device, fio jobs logged per second, the writer."""

    track = "T3"
    packages: tuple[str, ...] = ("fio", "util-linux")
    commands: tuple[str, ...] = ("fio", "losetup")
    goal = "latency"
    warmup = 2.0
    min_window = 2.5

    def unavailable(self) -> str | None:
        """Missing commands, or no loop-control (needs root and the loop driver)."""
        why = super().unavailable()
        if why:
            return why
        if not Path("/dev/loop-control").exists():
            return "no /dev/loop-control (the loop driver)"
        return None

    def new_loop_session(self, run_dir: Path) -> LoopSession:
        """A session with a filled loop device of its own."""
        base = self.new_session(run_dir)
        session = LoopSession(workload=base.workload, dir=base.dir, log=base.log,
                              match=base.match)
        try:
            dev = ScratchDevice(SIZE_MIB, parent=session.dir)
        except SandboxError as err:
            raise RuntimeError(f"{self.name}: {err}") from err
        session.device = dev
        session.extra["io_device"] = dev.name
        fill = subprocess.run(["fio", "--name=fill", f"--filename={dev.path}", "--rw=write",
                               "--bs=1M", "--direct=1", f"--size={SIZE_MIB}M"],
                              capture_output=True, text=True, check=False, timeout=300)
        if fill.returncode != 0:
            session.stop()
            raise RuntimeError(f"{self.name}: filling {dev.path} failed: "
                               f"{fill.stderr.strip()[-300:]}")
        return session

    def spawn_fio(self, session: LoopSession, name: str, job: list[str],
                  log: Path) -> subprocess.Popen[bytes]:
        """One fio job for the whole session, logged per second to ``log``."""
        assert session.device is not None
        dev = session.device
        argv = python_argv("schedcp_bench.workloads.fio_stream", "--log", str(log),
                           "--dev-stat", f"/sys/block/{dev.name}/stat", "--",
                           "fio", f"--name={name}", f"--filename={dev.path}", "--direct=1",
                           f"--description={session.dir}",  # the session's --match finds it
                           "--time_based=1", "--runtime=86400", *job)
        return session.spawn(argv, env=python_env())

    def start_io(self, run_dir: Path, reader_job: list[str],
                 hog: bool = False) -> LoopSession:
        """The writer, the optional hog, then the measured job (session.log)."""
        session = self.new_loop_session(run_dir)
        try:
            writer = self.spawn_fio(session, "writer", WRITER, session.dir / "writer.jsonl")
            roles: dict[str, list[int]] = {"bulk-writer": [writer.pid], "copy": [writer.pid]}
            if hog:
                h = self.spawn_hog(session, ncpu())
                roles.update(batch=[h.pid], noisy=[h.pid])
            reader = self.spawn_fio(session, "reader", reader_job, session.log)
        except Exception:
            session.stop()
            raise
        roles.update(reader=[reader.pid], database=[reader.pid], latency=[reader.pid])
        session.roles = roles
        return session

    def io_figures(self, session: Session, t0: float, t1: float,
                   keys: dict[str, str]) -> dict[str, float | None]:
        """Medians over the window's per-second records: metric -> record key."""
        recs = good(session.records(t0, t1), *keys.values())
        out: dict[str, float | None] = {m: median(r[k] for r in recs) for m, k in keys.items()}
        writer = good(read_log(session.dir / "writer.jsonl", t0, t1), "write_iops")
        mib = median(r["write_iops"] for r in writer)  # 1 MiB per write
        out["writer_mib_s"] = mib
        return out


_READ_METRICS = (
    Metric("read_p99_us", "us", "lower", 1.0, "random 4 KiB read latency, 99th percentile"),
    Metric("read_p50_us", "us", "lower", 0.5, "random 4 KiB read latency, median"),
    Metric("read_iops", "IO/s", "higher", 0.25, "reads completed per second (queue depth 1)"),
    Metric("writer_mib_s", "MiB/s", "higher", 1.0, "the sequential writer's throughput"),
)


class FioReadBesideWriter(IoWorkload):
    """Random reads at queue depth 1 beside a bulk sequential writer."""

    name = "fio-read-beside-writer"
    description = ("fio 4 KiB random reads at queue depth 1 beside a 1 MiB direct sequential "
                   "writer at queue depth 16, on a loop device of the session's own")
    metrics = _READ_METRICS
    slos = (SLO("read_iops", ">=", 20.0, hard=True),
            SLO("writer_mib_s", ">=", 50.0, hard=True),
            SLO("read_p99_us", "<=", 9200.0, hard=False),
            SLO("read_p50_us", "<=", 4800.0, hard=False))

    def start(self, run_dir: Path, seed: int) -> Session:
        """Writer first, then the reader."""
        return self.start_io(run_dir, READER)

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Reader percentiles and rate, writer throughput (medians of 1 s records)."""
        return self.io_figures(session, t0, t1, {"read_p99_us": "read_p99_us",
                                                 "read_p50_us": "read_p50_us",
                                                 "read_iops": "read_iops"})


class FioMixedService(IoWorkload):
    """A mixed read/write service at a fixed rate beside a bulk writer."""

    name = "fio-mixed-service"
    description = ("fio service: 70 % random 4 KiB reads, 30 % writes at queue depth 4, "
                   "300 reads/s and 150 writes/s at most, beside a 1 MiB sequential writer")
    metrics = (
        Metric("read_p99_us", "us", "lower", 1.0, "the service's read latency, 99th percentile"),
        Metric("write_p99_us", "us", "lower", 0.5,
               "the service's write latency, 99th percentile"),
        Metric("service_iops", "IO/s", "higher", 0.5, "reads and writes the service completed"),
        Metric("writer_mib_s", "MiB/s", "higher", 1.0, "the sequential writer's throughput"),
    )
    slos = (SLO("service_iops", ">=", 100.0, hard=True),
            SLO("writer_mib_s", ">=", 50.0, hard=True),
            SLO("read_p99_us", "<=", 9200.0, hard=False),
            SLO("write_p99_us", "<=", 9200.0, hard=False))

    def start(self, run_dir: Path, seed: int) -> Session:
        """Writer first, then the service."""
        return self.start_io(run_dir, SERVICE)

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Service percentiles and rate, writer throughput."""
        out = self.io_figures(session, t0, t1, {"read_p99_us": "read_p99_us",
                                                "write_p99_us": "write_p99_us",
                                                "reads": "read_iops", "writes": "write_iops"})
        reads, writes = out.pop("reads"), out.pop("writes")
        out["service_iops"] = None if reads is None or writes is None else reads + writes
        return out


class FioReadCpuIo(IoWorkload):
    """The random reader beside the writer and a CPU hog: it waits on both."""

    name = "fio-read-cpu-io"
    description = ("fio 4 KiB random reads at queue depth 1 beside a 1 MiB sequential writer "
                   "and a CPU hog with one spinning thread per CPU")
    packages = ("fio", "util-linux", "gcc", "libc6-dev")
    commands = ("fio", "losetup", "cc")
    natives = ("t1hog",)
    metrics = (*_READ_METRICS,
               Metric("hog_rate", "M iter/s", "higher", 0.5, "CPU hog throughput"))
    slos = (SLO("read_iops", ">=", 20.0, hard=True),
            SLO("writer_mib_s", ">=", 50.0, hard=True),
            SLO("read_p99_us", "<=", 14000.0, hard=False))

    def start(self, run_dir: Path, seed: int) -> Session:
        """Writer, hog, then the reader."""
        return self.start_io(run_dir, READER, hog=True)

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Reader figures, writer throughput and the hog's rate."""
        out = self.io_figures(session, t0, t1, {"read_p99_us": "read_p99_us",
                                                "read_p50_us": "read_p50_us",
                                                "read_iops": "read_iops"})
        out["hog_rate"] = hog_figures(session.dir / "hog.jsonl", t0, t1)["rate"]
        return out
