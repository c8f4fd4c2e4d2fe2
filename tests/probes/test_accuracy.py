"""The probes agree with the kernel's own per-task accounting on a load we create.

Each test attaches a probe for a few seconds over the module's workload and
compares the probe's per-process figures with /proc deltas taken right after
attach and right before detach.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from schedcpd.probes import PROBES, ProbeSession
from tests.probes.conftest import Workload

WINDOW = 3.0
ATTEMPTS = 3
T = TypeVar("T")
pytestmark = pytest.mark.slow


def agree_in_one_of(attempts: int, measure: Callable[[], list[str]]) -> None:
    """Run ``measure`` until it reports no disagreement, at most ``attempts`` times.

    Why retry: a wait in progress at either end of the window is counted by
    one side only, so one long wait caused by another job on this shared
    machine can spoil a window; a real accounting bug fails every window.
    """
    failures: list[list[str]] = []
    for _ in range(attempts):
        problems = measure()
        if not problems:
            return
        failures.append(problems)
    pytest.fail(f"disagreement in all {attempts} windows: {failures}")


def schedstat(pid: int) -> tuple[int, int]:
    """(ns on CPU, ns waiting on a run queue) from /proc/<pid>/schedstat."""
    on_cpu, wait, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on_cpu), int(wait)


def status_switches(pid: int) -> tuple[int, int]:
    """(voluntary, nonvoluntary) context switches from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])


def migrations(pid: int) -> int | None:
    """se.nr_migrations from /proc/<pid>/sched, None if the kernel hides it."""
    try:
        text = Path(f"/proc/{pid}/sched").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("se.nr_migrations"):
            return int(line.split(":")[1])
    return None


def observe(probe: str, bpf_dir: Path, pids: list[int],
            proc: Callable[[int], T]) -> tuple[dict[str, Any], dict[int, T], dict[int, T], float]:
    """Attach ``probe`` for one window; its result, ``proc(pid)`` at both ends, the ns between.

    The /proc figures are read right after the attach and right before the detach.
    """
    with ProbeSession(PROBES[probe], bpf_dir) as session:
        session.start()
        t0 = time.monotonic()
        before = {pid: proc(pid) for pid in pids}
        time.sleep(WINDOW)
        after = {pid: proc(pid) for pid in pids}
        elapsed_ns = (time.monotonic() - t0) * 1e9
        session.stop()
        return session.read(top=None), before, after, elapsed_ns


def by_pid(result: dict) -> dict[int, dict]:
    return {row["pid"]: row for row in result["processes"]}


def close_to(measured: float, expected: float, rel: float, slack: float = 0.0) -> bool:
    return abs(measured - expected) <= rel * expected + slack


def test_runqlat_total_wait_matches_schedstat(bpf_dir: Path, workload: Workload) -> None:
    pids = workload.hog_pids
    first = pids[0]

    def measure() -> list[str]:
        # Two attachments over the same window: every task, and one pid only.
        with ProbeSession(PROBES["runqlat"], bpf_dir) as every, ProbeSession(
            PROBES["runqlat"], bpf_dir, pid=first
        ) as only:
            every.start()
            only.start()
            before = {pid: schedstat(pid)[1] for pid in pids}
            time.sleep(WINDOW)
            after = {pid: schedstat(pid)[1] for pid in pids}
            every.stop()
            only.stop()
            res_every, res_only = every.read(top=None), only.read(top=None)

        # Sanity that holds in every window, noisy or not.
        assert sum(b["count"] for b in res_every["histogram"]) == res_every["count"]
        assert [row["pid"] for row in res_only["processes"]] == [first]
        assert res_only["dropped"] == 0

        kernel = {pid: after[pid] - before[pid] for pid in pids}
        rows = by_pid(res_every)
        probe = {pid: rows[pid]["wait_ns"] for pid in pids}
        # 4 hogs on 2 CPUs: each waits at least half the window.
        assert sum(kernel.values()) > WINDOW * 1e9 * 0.5 * len(pids) * 0.9
        assert res_every["total_wait_ns"] >= sum(probe.values())
        problems = []
        if not close_to(sum(probe.values()), sum(kernel.values()), 0.10):
            problems.append(f"all hogs: probe {probe} schedstat {kernel}")
        if not close_to(res_only["total_wait_ns"], kernel[first], 0.10):
            filtered = res_only["total_wait_ns"]
            problems.append(f"pid filter: probe {filtered} schedstat {kernel[first]}")
        return problems

    agree_in_one_of(ATTEMPTS, measure)


def test_cswitch_counts_match_proc_status(bpf_dir: Path, workload: Workload) -> None:
    sleeper, pids = workload.sleeper.pid, workload.pids

    def measure() -> list[str]:
        result, before, after, _ = observe("cswitch", bpf_dir, pids,
                                           lambda pid: (*status_switches(pid), migrations(pid)))
        rows = by_pid(result)
        assert result["switches"] == result["voluntary"] + result["involuntary"]
        # ~2 ms sleeps: many voluntary switches (hundreds when quiet); hogs get preempted.
        assert rows[sleeper]["voluntary"] > 20
        assert all(rows[pid]["involuntary"] > 10 for pid in workload.hog_pids)
        problems = []
        for pid in pids:
            vol0, invol0, mig0 = before[pid]
            vol1, invol1, mig1 = after[pid]
            row = rows[pid]
            expected = {"voluntary": vol1 - vol0, "involuntary": invol1 - invol0}
            if mig0 is not None and mig1 is not None:
                expected["migrations"] = mig1 - mig0
            for key, value in expected.items():
                if not close_to(row[key], value, 0.10, slack=5):
                    problems.append(f"pid {pid} {key}: probe {row[key]} /proc {value}")
        return problems

    agree_in_one_of(ATTEMPTS, measure)


def test_offcpu_splits_blocked_and_runqueue(bpf_dir: Path, workload: Workload) -> None:
    sleeper, pids = workload.sleeper.pid, workload.pids

    def measure() -> list[str]:
        result, before, after, elapsed_ns = observe("offcpu", bpf_dir, pids, schedstat)
        rows = by_pid(result)
        assert result["off_cpu_ns"] == result["blocked_ns"] + result["runqueue_ns"]
        problems = []
        hog_wait = sum(after[pid][1] - before[pid][1] for pid in workload.hog_pids)
        hog_runq = sum(rows[pid]["runqueue_ns"] for pid in workload.hog_pids)
        for pid in workload.hog_pids:
            # A hog never blocks: all its off-CPU time is run-queue wait.
            assert rows[pid]["blocked_ns"] <= 0.01 * rows[pid]["off_cpu_ns"], rows[pid]
        if not close_to(hog_runq, hog_wait, 0.10):
            problems.append(f"hogs: runqueue {hog_runq} schedstat wait {hog_wait}")
        # The sleeper is off CPU for the window less its CPU time; its
        # run-queue share is its schedstat wait, the rest it slept.
        on_cpu = after[sleeper][0] - before[sleeper][0]
        wait = after[sleeper][1] - before[sleeper][1]
        off = rows[sleeper]
        assert off["blocked_ns"] > 0, off
        if not close_to(off["off_cpu_ns"], elapsed_ns - on_cpu, 0.10):
            problems.append(f"sleeper: off {off} window {elapsed_ns} on-CPU {on_cpu}")
        # On a quiet host the probe books ~6-7 us more per wakeup than
        # schedstat (measured: 1430 wakeups, +8-10 ms): it counts from the
        # sched_wakeup event, while schedstat's run_delay does not restart for
        # a task EEVDF kept queued while "sleeping" (delayed dequeue, 6.12+) --
        # the likely cause.  Allow 10 us per wakeup on top of 10 %.
        slack = 2e6 + 10_000 * off["intervals"]
        if not close_to(off["runqueue_ns"], wait, 0.10, slack=slack):
            problems.append(f"sleeper: runqueue {off['runqueue_ns']} schedstat wait {wait} "
                            f"over {off['intervals']} wakeups")
        return problems

    agree_in_one_of(ATTEMPTS, measure)
