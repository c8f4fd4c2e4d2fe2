"""The offline rule planner: the default backend, no network, no key.

Rules map the profile's shape and goal to an ordered list of repository
policies (the decision ladder's *configure* rung), each with the reason it
fits and the parameters chosen.  A base with an antipattern recorded on the
same profile is skipped; when every rule is used up the planner composes a
policy from primitives once, then gives up.
"""

from __future__ import annotations

import logging
from typing import Any

from schedcp_agent.observe import WorkloadProfile
from schedcp_agent.plan import Attempt, Candidate, RepositoryView, compose, configure
from schedcp_agent.synth import derived_candidate

_LOGGER = logging.getLogger(__name__)

Rule = tuple[str, str, dict[str, Any]]

RULES: dict[tuple[str, str], list[Rule]] = {
    ("latency-beside-cpu-hogs", "latency"): [
        ("latency-protect", "the CPU hogs go to SCHED_IDLE: the latency task preempts them on "
         "every wake-up (measured here: wake p99 ~1.3 ms -> ~5 us); its 0.5 ms slice lets it "
         "preempt other normal tasks too", {}),
        ("latency-protect-cgroup", "the hogs into a cpu.idle cgroup: the same protection for "
         "multi-process jobs and their children", {}),
    ],
    ("latency-beside-cpu-and-io", "latency"): [
        ("database", "the latency target waits both for a CPU and on the disk: the "
         "multi-subsystem database policy gives it both halves as one deployment -- a 0.5 ms "
         "slice and 1 ns timer slack (it preempts normal tasks on wake-up) and I/O priority "
         "best-effort 0 (its reads are served before normal-priority neighbours'); if either "
         "part fails, the other is restored", {}),
        ("latency-protect", "CPU half only: the CPU hogs to SCHED_IDLE, the latency target a "
         "0.5 ms slice", {}),
    ],
    ("io-reads-beside-writer", "latency"): [
        ("io-protect-reads", "reads wait behind a bulk writer's backlog: the writer at I/O "
         "priority class idle is dispatched only when no other I/O waits (measured here: "
         "reader p50 4.75 ms -> 95 us beside a 1 MiB direct writer, docs/io.md); with "
         "--io-device, the disk also gets mq-deadline with a 20 ms read deadline", {}),
    ],
    ("io-reads-beside-writer", "throughput"): [
        ("io-batch-copy", "throughput of the writer: best-effort level 0 for it; with "
         "--io-device, 4 MiB read-ahead and deeper queues", {}),
    ],
    ("io-bound", "throughput"): [
        ("io-batch-copy", "I/O-bound work that should finish as fast as the disk allows: "
         "best-effort I/O priority level 0 for it (first among best-effort tasks); with "
         "--io-device, 4 MiB read-ahead, 256 requests and bigger mq-deadline batches so "
         "sequential requests merge and stream", {}),
    ],
    ("io-bound", "makespan"): [
        ("io-batch-copy", "I/O-bound batch: best-effort I/O priority level 0 finishes it "
         "sooner", {}),
    ],
    ("latency-beside-cpu-hogs", "throughput"): [
        ("batch-throughput", "SCHED_BATCH with a long slice for the CPU-bound processes; the "
         "latency task still preempts them", {}),
    ],
    ("fork-churn", "makespan"): [
        ("parallel-build", "a build tree of short-lived CPU-bound processes: a cgroup with 4x "
         "the default CPU weight gives it more of a shared machine, SCHED_BATCH stops them "
         "preempting each other on every fork/exit wake-up, a 6 ms slice cuts switches; "
         "descendants inherit it", {}),
        ("batch-throughput", "SCHED_BATCH with a longer slice on the whole tree", {}),
    ],
    ("fork-churn", "throughput"): [
        ("parallel-build", "a 4x CPU weight, SCHED_BATCH and a longer slice for the whole "
         "process tree", {}),
    ],
    ("long-tail-batch", "makespan"): [
        ("long-job-first", "the makespan is bounded by the long job: give it most of the CPU "
         "(cpu.shares 8192 vs 1024) so it finishes while the short jobs fill the rest", {}),
        ("batch-throughput", "SCHED_BATCH with a long slice for every job", {}),
    ],
    ("long-tail-batch", "throughput"): [
        ("batch-throughput", "SCHED_BATCH with a long slice for every job", {}),
    ],
    ("job-batch", "makespan"): [
        ("batch-throughput", "a short-job batch: its jobs share the CPUs; SCHED_BATCH and a "
         "longer slice cut the switches among them, and jobs started later inherit it", {}),
    ],
    ("job-batch", "throughput"): [
        ("batch-throughput", "a short-job batch: SCHED_BATCH and a longer slice for the "
         "driver's jobs, which inherit it", {}),
    ],
    ("cpu-batch", "throughput"): [
        ("batch-throughput", "CPU-bound batch: SCHED_BATCH and a 12 ms slice cut context "
         "switches and cache refills; nice 5 keeps the rest of the host responsive", {}),
        ("parallel-build", "SCHED_BATCH with a 6 ms slice and a 4x CPU weight", {}),
    ],
    ("cpu-batch", "makespan"): [
        ("batch-throughput", "CPU-bound batch: fewer switches finish the set sooner", {}),
    ],
    ("interactive", "latency"): [
        ("interactive-boost", "a shorter slice gives the interactive tasks earlier virtual "
         "deadlines on wake-up", {}),
    ],
}


def rules_for(profile: WorkloadProfile) -> list[Rule]:
    """The ordered rules for a profile (empty when none is written for it)."""
    return list(RULES.get((profile.shape, profile.goal), []))


class OfflinePlanner:
    """Rule-based planner over the profile and the repository's history."""

    name = "offline"

    def __init__(self, repo: RepositoryView, synthesize: bool = False,
                 t2_only: bool = False) -> None:
        self.repo = repo
        self.synthesize = synthesize or t2_only
        """Derive a sched_ext program from the profile first (T2 allowed)."""
        self.t2_only = t2_only
        """Only the derived program (``--track T2``): no T1 rules after it."""
        self._queue: list[Rule] | None = None
        self._composed = False
        self.avoided: dict[str, str] = {}

    async def next_candidate(self, profile: WorkloadProfile,
                             attempts: list[Attempt]) -> Candidate | None:
        """The next rule whose base exists, was not tried and did not regress here."""
        if self._queue is None:
            self._queue = rules_for(profile)
            self.avoided = await self.repo.avoided_bases(profile)
        tried = {a.candidate.base for a in attempts}
        if self.synthesize and not any(a.candidate.rung == "synthesize" for a in attempts):
            return derived_candidate(profile)
        if self.t2_only:
            return None
        while self._queue:
            base, why, settings = self._queue.pop(0)
            if base in tried:
                continue
            if base in self.avoided:
                _LOGGER.info("skipping %s: antipattern on this profile: %s", base,
                             self.avoided[base])
                continue
            cand = await configure(self.repo, profile, base, why, settings)
            if cand is not None:
                if self.avoided:
                    cand.notes.append("avoided (antipattern on this profile): " +
                                      ", ".join(sorted(self.avoided)))
                return cand
        if not self._composed and "composed" not in tried:
            self._composed = True
            return compose(profile)
        return None
