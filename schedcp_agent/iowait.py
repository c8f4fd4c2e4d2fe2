"""The targets' I/O evidence: who writes in bulk, who waits on the disk, who on a CPU.

The agent runs unprivileged and cannot read another user's ``/proc/<pid>/io``;
the daemon can, and its tier-1 summary (``GetSummary normal``, docs/analysis.md)
carries per process ``io_kbs`` (block-layer bytes per second), ``wr_kbs`` (the
write part), ``blkio`` (block-I/O delay in s/s from taskstats delay accounting;
0 while ``kernel.task_delayacct`` is off), ``d_frac`` (share of samples in
uninterruptible sleep, which is how a reader waiting on the disk shows when
delay accounting is off) and ``wait`` (run-queue wait in s/s).  This module
turns those into the roles the io and multi-subsystem policies bind:

- a **bulk writer** writes at least :data:`WRITER_KBS` at the block layer,
  mostly writes;
- a target **waits on I/O** when it is in D in at least :data:`IO_WAIT_D` of
  the samples, or its block-I/O delay is at least :data:`IO_WAIT_BLKIO` s/s,
  or the daemon classes it io-bound and it reads at least
  :data:`READS_KBS`, and it is not itself a bulk writer;
- a target **waits for a CPU** when its run-queue wait is at least
  :data:`CPU_WAIT` s/s (the agent's own schedstat reading, else the daemon's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

WRITER_KBS = 2048.0
"""Block-layer writes (KiB/s) that make a bulk writer."""
WRITE_SHARE = 0.8
"""A bulk writer's writes are at least this share of its block-layer bytes."""
IO_WAIT_D = 0.25
"""Share of samples in D state from which a target waits on I/O."""
IO_WAIT_BLKIO = 0.1
"""Block-I/O delay (s/s) from which a target waits on I/O (with delay accounting on)."""
READS_KBS = 64.0
"""Block-layer reads (KiB/s) with which a target the daemon classes io-bound waits on I/O."""
CPU_WAIT = 0.05
"""Run-queue wait (s/s) from which a target waits for a CPU."""


@dataclass
class IoEvidence:
    """One process's I/O and wait figures over the daemon's summary window."""

    pid: int
    comm: str
    io_kbs: float = 0.0
    wr_kbs: float = 0.0
    d_frac: float = 0.0
    blkio: float = 0.0
    cpu_wait: float = 0.0
    cls: str = ""

    @property
    def rd_kbs(self) -> float:
        """Block-layer reads, KiB/s."""
        return max(0.0, self.io_kbs - self.wr_kbs)

    @property
    def writer(self) -> bool:
        """A bulk writer: much written, mostly writes."""
        return self.wr_kbs >= WRITER_KBS and self.wr_kbs >= WRITE_SHARE * self.io_kbs

    @property
    def waits_on_io(self) -> bool:
        """It spends its time waiting for the disk (and is not the bulk writer)."""
        # The daemon's class io-bound with reads of its own: reads that reach the
        # block layer at a rate with little CPU are synchronous waits, even when
        # a CPU hog keeps the reader runnable (not in D) between them.
        return not self.writer and (self.d_frac >= IO_WAIT_D or self.blkio >= IO_WAIT_BLKIO
                                    or (self.cls == "io-bound" and self.rd_kbs >= READS_KBS))

    @property
    def waits_on_cpu(self) -> bool:
        """It waits for a CPU a noticeable part of the time."""
        return self.cpu_wait >= CPU_WAIT

    @property
    def io_bound(self) -> bool:
        """Its work is I/O: it moves data or waits on the disk."""
        return self.writer or self.waits_on_io or self.cls == "io-bound"

    def describe(self) -> str:
        """One evidence line."""
        what = ("bulk writer" if self.writer else "waits on I/O" if self.waits_on_io
                else "I/O-bound" if self.io_bound else "little I/O")
        cpu = f", waits for a CPU {self.cpu_wait:.2f} s/s" if self.waits_on_cpu else ""
        return (f"{self.comm}[{self.pid}]: {what}: reads {self.rd_kbs:.0f} KiB/s, writes "
                f"{self.wr_kbs:.0f} KiB/s, in D {self.d_frac:.0%} of samples, block-I/O "
                f"delay {self.blkio:.2f} s/s{cpu} per GetSummary")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form with the derived roles."""
        return {**asdict(self), "rd_kbs": round(self.rd_kbs, 1), "writer": self.writer,
                "waits_on_io": self.waits_on_io, "waits_on_cpu": self.waits_on_cpu}


def _num(entry: dict[str, Any], key: str) -> float:
    value = entry.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def io_evidence(summary: dict[str, Any], pids: set[int],
                cpu_wait: dict[int, float]) -> dict[int, IoEvidence]:
    """The I/O evidence of the targets ``pids`` the summary lists (``top``, ``io_top``).

    ``cpu_wait`` is the agent's own run-queue wait reading per pid (schedstat,
    world-readable); the daemon's ``wait`` is used where it has none.
    """
    out: dict[int, IoEvidence] = {}
    for e in [*summary.get("top", []), *summary.get("io_top", [])]:
        pid = e.get("pid")
        if not isinstance(pid, int) or pid not in pids:
            continue
        out[pid] = IoEvidence(pid, str(e.get("comm", "?")), _num(e, "io_kbs"),
                              _num(e, "wr_kbs"), _num(e, "d_frac"), _num(e, "blkio"),
                              cpu_wait.get(pid, _num(e, "wait")), str(e.get("cls", "")))
    return out


def io_shape(ev: dict[int, IoEvidence], hogs: list[int], competitors: bool
             ) -> tuple[str, dict[str, list[int]], list[str]] | None:
    """An I/O shape of the targets, or None when I/O does not decide it.

    - ``latency-beside-cpu-and-io``: a target waits on I/O *and* for a CPU
      beside CPU hogs among the targets (or competitors outside the scope
      when no bulk writer is among the targets) -> roles ``database`` (it) and
      ``batch`` (the hogs among the targets); the database policy's two parts.
    - ``io-reads-beside-writer``: a target waits on I/O beside a bulk writer
      -> roles ``reader`` and ``bulk-writer`` (io-protect-reads lowers the
      writer).
    - ``io-bound``: the targets' work is I/O (writers, readers), nothing
      waits for a CPU -> role ``io`` (io-batch-copy's ``copy``).
    """
    writers = sorted(p for p, e in ev.items() if e.writer)
    # A bulk writer busy enough to be classed cpu-bound competes for the disk.
    hogs = [h for h in hogs if h not in writers]
    waiting = sorted(p for p, e in ev.items() if e.waits_on_io and p not in hogs)
    both = sorted(p for p in waiting if ev[p].waits_on_cpu)
    # CPU hogs among the targets, or (with no bulk writer to blame) busy
    # competitors outside the scope: the CPU half matters as much as the disk.
    if both and (hogs or (competitors and not writers)):
        why = [f"{ev[p].comm}[{p}] waits both on I/O (in D {ev[p].d_frac:.0%}, block-I/O "
               f"delay {ev[p].blkio:.2f} s/s) and for a CPU ({ev[p].cpu_wait:.2f} s/s) beside "
               f"CPU-bound work" for p in both]
        return "latency-beside-cpu-and-io", {"database": both, **({"batch": hogs} if hogs
                                                                    else {})}, why
    if waiting and writers:
        why = [f"{', '.join(f'{ev[p].comm}[{p}]' for p in waiting)} wait(s) on I/O beside the "
               f"bulk writer(s) {', '.join(f'{ev[p].comm}[{p}]' for p in writers)} "
               f"({sum(ev[p].wr_kbs for p in writers) / 1024:.1f} MiB/s written)"]
        return "io-reads-beside-writer", {"reader": waiting, "bulk-writer": writers}, why
    busy = sorted(p for p, e in ev.items() if e.io_bound)
    if busy and not hogs and not any(ev[p].waits_on_cpu for p in busy):
        return "io-bound", {"io": busy}, [f"the targets' work is I/O: "
                                          f"{', '.join(f'{ev[p].comm}[{p}]' for p in busy)}"]
    return None
