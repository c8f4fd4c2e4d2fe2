"""Job shapes: a short-job batch or fork churn, told by the process tree, not lifetimes.

Both show processes that come and go within the observation.  What tells
them apart is what those processes are and how they start:

- a **short-job batch** (a test runner, sysbench looped, a set of jobs
  started at once): a parent starts *jobs* -- leaves of the tree that fork
  nothing themselves (no child seen, no CPU of reaped children), running
  *one command* -- either several at the same moment (a burst:
  :data:`MIN_BURST` or more within :data:`BURST_SECONDS`), or one after
  another or :data:`MIN_BURST` or more side by side, each running through
  at least one snapshot period (it does real work, it is not a helper that
  execs and exits);
- **fork churn** (``make -j``, a shell script's pipelines): a tree of
  short-lived helpers -- intermediate processes that fork their own
  children (make -> sh -> cc -> cc1), several commands, each living less
  than a snapshot period and started one or two at a time as others end.

:func:`job_batches` finds the parents whose children are batch jobs; the
observation checks it before the fork-churn rule (see
:mod:`schedcp_agent.observe`), so a job loop is never called churn because
its jobs live less than a second.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import dataclass

from schedcp_agent.targets import Proc, ScopeTracker, Seen

MIN_BURST = 4
"""Sibling jobs started together that make a burst."""
BURST_SECONDS = 0.1
HOMOGENEOUS = 0.8
"""Share of a parent's jobs that must run the same command."""
MIN_JOBS = 2


@dataclass
class JobBatch:
    """A parent's children that are batch jobs, and the shape that says so."""

    parent: int
    parent_comm: str
    command: str
    jobs: int
    share: float
    burst: int
    """The largest number of jobs started together."""
    in_bursts: float
    """Share of the jobs that started in a burst."""
    frames: float
    """Median number of snapshots a job was seen in."""
    peak: int
    """The most jobs alive at once."""
    threads: int
    """The most threads one job had."""
    root: int = 0
    """The persisting process (the driver) the batch runs under."""

    @property
    def serial(self) -> bool:
        """One job at a time, one after another."""
        return self.peak <= 1

    def describe(self) -> str:
        """One line of evidence."""
        how = (f"started together (up to {self.burst} at once, {self.in_bursts:.0%} of them "
               f"in bursts)" if self.in_bursts >= 0.5 else
               "one after another" if self.serial else f"up to {self.peak} at a time")
        return (f"{self.parent_comm}[{self.parent}] ran {self.jobs} jobs of one command "
                f"({self.command}, {self.share:.0%}), {how}; each a leaf that forked nothing, "
                f"seen in {self.frames:g} snapshots (median), {self.threads} thread(s) each: "
                f"a short-job batch, not fork churn")


def _bursts(starts: list[int], window: int) -> tuple[int, int]:
    """(largest burst, jobs in bursts of MIN_BURST or more) from start times in ticks."""
    starts = sorted(starts)
    largest, inside, i = 0, 0, 0
    while i < len(starts):
        j = i
        while j + 1 < len(starts) and starts[j + 1] - starts[i] <= window:
            j += 1
        size = j - i + 1
        largest = max(largest, size)
        if size >= MIN_BURST:
            inside += size
        i = j + 1
    return largest, inside


def _root(pid: int, by_pid: dict[int, Proc], current: dict[int, Proc]) -> int:
    """The top persisting ancestor of ``pid`` within the scope (the driver)."""
    node, root = pid, pid if pid in current else 0
    seen: set[int] = set()
    while node in by_pid and node not in seen:
        seen.add(node)
        if node in current:
            root = node
        node = by_pid[node].ppid
    return root


def job_batches(tracker: ScopeTracker, ticks: int | None = None) -> list[JobBatch]:
    """Parents in the scope whose transient children are batch jobs (see the module doc)."""
    hz = ticks or os.sysconf("SC_CLK_TCK")
    seen = list(tracker.seen.values())
    parents_of = {s.proc.ppid for s in seen}
    by_pid = {s.proc.pid: s.proc for s in seen}
    gone = {(p.pid, p.start) for p in tracker.vanished()}
    transient = [s for s in seen if not s.alive_at_start or (s.proc.pid, s.proc.start) in gone]
    kids: dict[int, list[Seen]] = {}
    for s in transient:
        kids.setdefault(s.proc.ppid, []).append(s)
    out = []
    for parent, group in kids.items():
        # A leaf forked nothing: no child seen, and no CPU of reaped children (a make
        # whose sh helpers lived too briefly for any snapshot still has their CPU).
        leaves = [s for s in group if s.proc.pid not in parents_of and not s.proc.child_ticks]
        if len(leaves) < MIN_JOBS or len(leaves) < len(group) * HOMOGENEOUS:
            continue
        command, count = Counter(s.proc.comm for s in leaves).most_common(1)[0]
        jobs = [s for s in leaves if s.proc.comm == command]
        share = count / len(group)
        if share < HOMOGENEOUS:
            continue  # several commands: helpers of a build, not jobs
        largest, inside = _bursts([s.proc.start for s in jobs], max(1, int(BURST_SECONDS * hz)))
        frames = statistics.median(s.frames for s in jobs)
        peak = max(s.peak for s in jobs)
        bursty = inside / len(jobs) >= 0.5
        # Jobs that each run a while (seen in two snapshots or more), one after
        # another or a set side by side (however slowly a loaded host spawned them).
        runs = frames >= 2 and (peak <= 1 or peak >= MIN_BURST)
        if not (bursty or runs):
            continue
        parent_comm = by_pid[parent].comm if parent in by_pid else \
            (tracker.current[parent].comm if parent in tracker.current else "?")
        out.append(JobBatch(parent, parent_comm, command, len(jobs), round(share, 2), largest,
                            round(inside / len(jobs), 2), frames, peak,
                            max(s.proc.threads for s in jobs),
                            _root(parent, by_pid, tracker.current)))
    return sorted(out, key=lambda b: -b.jobs)


def helpers_that_fork(tracker: ScopeTracker) -> list[Proc]:
    """Processes that came and went and forked children of their own (make -> sh).

    The mark of fork churn that does not depend on a rate: a build's steps
    are short-lived processes that start helpers (their children are seen,
    or their reaped children's CPU shows), however slowly a loaded host runs
    them.
    """
    seen = list(tracker.seen.values())
    parents_of = {s.proc.ppid for s in seen}
    gone = {(p.pid, p.start) for p in tracker.vanished()}
    return [s.proc for s in seen
            if (s.proc.pid, s.proc.start) in gone and not s.alive_at_start
            and (s.proc.child_ticks > 0 or s.proc.pid in parents_of)]
