"""Contention before job shapes: the 2026-12-07 misclassifications, on constructed trackers.

Each scope is built as the bench's sessions look to the observation (the
process tree over 3 s of snapshots, and each process's schedstat: ns run,
ns waited, times run), so the verdict does not depend on this machine's
load.  redis, nginx and msglat were profiled as a short-job batch (their
load generators restart in short runs), stress-cyclic, sqlite-analytics and
perf-pipe as fork churn; the latency-sensitive task is what they are about.
"""

from __future__ import annotations

from schedcp_agent.latency import latency_case
from schedcp_agent.observe import Observer, WorkloadProfile
from schedcp_agent.plan import descendant_groups
from schedcp_agent.targets import Proc, Scope, ScopeTracker, Seen

SECONDS = 3.0
DRIVER, HOG = 100, 101


class Tree:
    """A constructed observation: processes, their lives and schedstat figures."""

    def __init__(self) -> None:
        self.tracker = ScopeTracker(Scope(match="run"))
        self.tracker.started, self.tracker.ended, self.tracker.snapshots = 0.0, SECONDS, 16

    def proc(self, pid: int, ppid: int, comm: str, *, cores: float = 0.0, wait: float = 0.0,
             runs_per_s: float = 0.0, life: tuple[float, float] = (0.0, SECONDS),
             threads: int = 1, child_ticks: int = 0, start: int = 0,
             sleeps: float | None = None) -> None:
        t0, t1 = life
        persists = t0 == 0.0 and t1 == SECONDS
        p = Proc(pid, ppid, comm, f"{comm} run", start or pid, (), threads, child_ticks)
        frames = max(1, int((t1 - t0) / 0.2) + 1)
        self.tracker.seen[(pid, p.start)] = Seen(p, t0, t1, alive_at_start=t0 == 0.0,
                                                 frames=frames, peak=1)
        if persists or t1 == SECONDS:
            self.tracker.current[pid] = p
        d, runs = t1 - t0, int(runs_per_s * (t1 - t0))
        last: tuple[int, ...] = (int(cores * d * 1e9), int(wait * d * 1e9), runs)
        if sleeps is not None:  # voluntary, involuntary switches
            last += (int(runs * sleeps), runs - int(runs * sleeps))
        self.tracker.schedstat[pid] = (t0, (0,) * len(last), t1, last)

    def shape(self, goal: str | None) -> tuple[str, dict[str, list[int]], list[int], list[str]]:
        obs = Observer(None, self.tracker)  # type: ignore[arg-type]
        obs.goal = goal
        evidence: list[str] = []
        shape, roles = obs._shape({}, evidence)
        return shape, roles, obs.trees, evidence


def _runs(tree: Tree, parent: int, comm: str, first_pid: int, count: int = 3,
          **kw: float) -> None:
    """``count`` runs of one command one after another under ``parent`` (a driver loop)."""
    span = SECONDS / count
    for i in range(count):
        end = SECONDS if i == count - 1 else (i + 1) * span - 0.05
        tree.proc(first_pid + i, parent, comm, life=(i * span + 0.05, end), **kw)  # type: ignore[arg-type]


def _redis() -> Tree:
    t = Tree()
    t.proc(10, 1, "redis-server", cores=0.18, wait=0.32, runs_per_s=8500, sleeps=0.79)
    t.proc(DRIVER, 1, "python3", cores=0.01, runs_per_s=5, child_ticks=40)
    t.proc(HOG, 1, "t1_hog", cores=0.32, wait=1.69, runs_per_s=128, threads=2, sleeps=0.01)
    _runs(t, DRIVER, "redis-benchmark", 200, cores=0.26, wait=0.44, runs_per_s=8400,
          sleeps=0.52)
    return t


def test_redis_is_a_latency_case_not_a_job_batch() -> None:
    shape, roles, trees, evidence = _redis().shape("latency")
    assert shape == "latency-beside-cpu-hogs", evidence
    assert roles == {"latency": [10, DRIVER], "batch": [HOG]}
    # The driver is in the latency role for the runs it starts: its group covers them.
    assert trees == [DRIVER]
    assert any("a latency case, whatever short jobs" in e for e in evidence), evidence
    assert any(e.startswith("3 run(s) of redis-benchmark under [100]") for e in evidence)
    # Without a goal too: the service waited for a CPU beside the hog.
    assert _redis().shape(None)[0] == "latency-beside-cpu-hogs"


def test_drivers_in_a_latency_role_cover_their_descendants() -> None:
    shape, roles, trees, _ = _redis().shape("latency")
    prof = WorkloadProfile(shape, "latency", "given", "t", roles=roles, trees=trees)
    groups = descendant_groups(prof)
    assert groups["latency"] and not groups["batch"]


def test_stress_cyclic_is_a_latency_case_not_fork_churn() -> None:
    # Two driver loops: stress-ng --cyclic (a parent and its FIFO worker, 1 s
    # runs) and stress-ng --cpu (a parent and one worker per CPU).  The cyclic
    # worker is SCHED_FIFO: it never waits, but the goal is latency.
    t = Tree()
    cyc, cpu = DRIVER, DRIVER + 1
    t.proc(cyc, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=5)
    t.proc(cpu, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=300)
    _runs(t, cyc, "stress-ng", 300, cores=0.01, runs_per_s=20, child_ticks=3)  # parents
    for i in range(3):
        s = i * 1.0
        t.proc(310 + i, 300 + i, "stress-ng-cycli", cores=0.02, runs_per_s=2000,
               life=(s + 0.1, min(SECONDS, s + 0.95)))
    _runs(t, cpu, "stress-ng", 400, cores=0.0, runs_per_s=10, child_ticks=100)
    for i in range(3):
        for j in range(2):
            t.proc(410 + 2 * i + j, 400 + i, "stress-ng-cpu", cores=0.9, wait=0.1,
                   runs_per_s=250, life=(i + 0.1, min(SECONDS, i + 0.95)))
    shape, roles, trees, evidence = t.shape("latency")
    assert shape == "latency-beside-cpu-hogs", evidence
    assert roles == {"latency": [cyc], "batch": [cpu]}
    assert trees == [cyc, cpu]
    # Nothing waited, and no goal given: not relabelled a latency case.
    assert t.shape(None)[0] != "latency-beside-cpu-hogs"


def test_sqlite_analytics_probe_beside_query_streams() -> None:
    t = Tree()
    t.proc(10, 1, "t1_probe", cores=0.03, wait=0.02, runs_per_s=200)
    t.proc(DRIVER, 1, "python3", cores=0.0, runs_per_s=2, child_ticks=400)
    _runs(t, DRIVER, "python3", 300, count=2, cores=0.01, runs_per_s=5, child_ticks=200)
    for i in range(2):
        for j in range(2):
            t.proc(310 + 2 * i + j, 300 + i, "python3", cores=0.95, wait=0.2, runs_per_s=300,
                   life=(1.5 * i + 0.1, min(SECONDS, 1.5 * i + 1.4)))
    shape, roles, trees, evidence = t.shape("latency")
    assert shape == "latency-beside-cpu-hogs", evidence
    assert roles == {"latency": [10], "batch": [DRIVER]} and trees == [DRIVER]


def test_msglat_and_perf_pipe_alone_are_interactive() -> None:
    # msglat: 1 s runs of one multi-threaded process, each a leaf, short bursts.
    t = Tree()
    t.proc(DRIVER, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=100)
    _runs(t, DRIVER, "msglat", 200, cores=1.2, wait=0.3, runs_per_s=30000)
    shape, roles, trees, evidence = t.shape("latency")
    assert (shape, roles, trees) == ("interactive", {"foreground": [DRIVER]}, [DRIVER]), evidence
    # perf bench sched pipe: the parent forks its partner; the partner is the leaf.
    p = Tree()
    p.proc(DRIVER, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=100)
    _runs(p, DRIVER, "perf", 200, cores=0.6, runs_per_s=28000, child_ticks=50)
    for i in range(3):
        p.proc(300 + i, 200 + i, "perf", cores=0.6, runs_per_s=28000,
               life=(i + 0.1, min(SECONDS, i + 0.95)))
    assert p.shape("latency")[0] == "interactive"


def _nothing_to_gain(tree: Tree, goal: str) -> str:
    obs = Observer(None, tree.tracker)  # type: ignore[arg-type]
    obs.goal = goal
    shape, roles = obs._shape({}, [])
    return obs._nothing_to_gain(WorkloadProfile(shape, goal, "given", "", roles=roles))


def test_interactive_tasks_that_do_not_wait_have_nothing_to_gain() -> None:
    """One runnable thread per CPU: no slice or weight has anything to arbitrate.

    perf bench sched pipe's pair waits ~5 % of its run time (2026-12-07:
    interactive-boost cut that wait and made the round trip 18 % slower);
    msglat's six threads on two CPUs wait most of theirs.
    """
    pipe = Tree()
    pipe.proc(DRIVER, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=100)
    _runs(pipe, DRIVER, "perf", 200, cores=0.6, wait=0.03, runs_per_s=28000, child_ticks=50)
    for i in range(3):
        pipe.proc(300 + i, 200 + i, "perf", cores=0.6, wait=0.03, runs_per_s=28000,
                  life=(i + 0.1, min(SECONDS, i + 0.95)))
    why = _nothing_to_gain(pipe, "latency")
    assert why.startswith("nothing to gain here: the latency-sensitive tasks"), why
    msglat = Tree()
    msglat.proc(DRIVER, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=100)
    _runs(msglat, DRIVER, "msglat", 200, cores=1.2, wait=0.9, runs_per_s=30000)
    assert _nothing_to_gain(msglat, "latency") == ""


def test_batch_shapes_stay_when_that_is_what_the_targets_are() -> None:
    # sysbench looped: CPU-bound leaves, nothing latency-sensitive: a job batch.
    t = Tree()
    t.proc(DRIVER, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=100)
    _runs(t, DRIVER, "sysbench", 200, cores=1.5, wait=0.05, runs_per_s=200, threads=2)
    assert latency_case(t.tracker).latency == []
    shape, roles, trees, _ = t.shape(None)
    assert (shape, roles, trees) == ("job-batch", {"batch": [DRIVER]}, [DRIVER])
    # hackbench-like: short-burst message passers with goal throughput and
    # nothing CPU-bound beside them: not turned into a latency case.
    h = Tree()
    h.proc(DRIVER, 1, "python3", cores=0.01, runs_per_s=3, child_ticks=100)
    _runs(h, DRIVER, "hackbench", 200, cores=0.4, wait=0.3, runs_per_s=5000)
    assert h.shape("throughput")[0] == "job-batch"
    # make -j: make and sh fork helpers; cc1 is CPU-bound: fork churn as before.
    m = Tree()
    m.proc(DRIVER, 1, "make", cores=0.02, runs_per_s=60, child_ticks=300)
    for i in range(6):
        m.proc(200 + i, DRIVER, "sh", cores=0.0, runs_per_s=5, child_ticks=30,
               life=(0.4 * i + 0.1, 0.4 * i + 0.5))
        m.proc(300 + i, 200 + i, "cc1", cores=0.9, wait=0.3, runs_per_s=150,
               life=(0.4 * i + 0.12, 0.4 * i + 0.48))
    assert m.shape("makespan")[0] == "fork-churn"


def test_switches_tell_a_preempted_handler_from_a_hog() -> None:
    # Measured here (bench nginx session, 3 s): nginx beside wrk and a hog was
    # preempted on wrk's every wake-up -- 46 % voluntary, 0.05 ms per run,
    # 0.3 cores + 0.4 s/s wait -- and is still a request handler; the hog, cut
    # to 0.6 ms turns by a 1 kHz probe, still never sleeps.
    t = Tree()
    t.proc(10, 1, "nginx", cores=0.30, wait=0.41, runs_per_s=6677, sleeps=0.46)
    t.proc(HOG, 1, "t1_hog", cores=0.6, wait=1.4, runs_per_s=980, threads=2, sleeps=0.0)
    kinds = {u.comm: u.kind() for u in latency_case(t.tracker).latency
             + latency_case(t.tracker).cpu_bound}
    assert kinds == {"nginx": "latency", "t1_hog": "cpu-bound"}
    shape, roles, _, evidence = t.shape("latency")
    assert (shape, roles) == ("latency-beside-cpu-hogs", {"latency": [10], "batch": [HOG]})
    assert any("46% of switches voluntary" in e for e in evidence), evidence
