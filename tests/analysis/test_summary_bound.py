"""The brief summary fits 1 KB whatever the samples hold (issue #24).

summary.build is fed samples no kernel would produce: comm names and cgroup
paths of any length and script (non-ASCII is escaped by json.dumps, six or
twelve bytes a character), hundreds of processes and cgroups, numbers with
hundreds of digits, NaN and infinities, dozens of PSI resources, long notes.
The brief text must stay within BRIEF_LIMIT and be strict JSON.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schedcpd.analysis import summary
from schedcpd.analysis.sampler import ProcDelta, Sample
from schedcpd.analysis.summary import BRIEF_LIMIT

_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)
_WIDE = st.text(st.sampled_from("é€😀\u2028\x00\"\\𝄞"), min_size=1, max_size=400)
_STR = st.one_of(_TEXT, _WIDE)
_FLOAT = st.one_of(st.floats(), st.floats(min_value=1e200, max_value=1e308),
                   st.floats(min_value=0, max_value=4))
_INT = st.one_of(st.integers(min_value=-(2**64), max_value=2**64),
                 st.integers(min_value=0, max_value=100))
# Pids from a range without real processes' odd numbers of digits: when the
# summary looks a pgid up in /proc it may find a real one; that is fine.
_PID = st.integers(min_value=1, max_value=2**22)


@st.composite
def _delta(draw: st.DrawFn, pid: int, t: float) -> ProcDelta:
    return ProcDelta(
        pid=pid, comm=draw(_STR), ppid=draw(_INT), pgrp=draw(st.one_of(_INT, st.just(pid))),
        state=draw(st.sampled_from("RSDZ")), threads=draw(_INT),
        cgroup=draw(st.one_of(_STR, st.just("/" + "deep/" * 200))),
        cpu_s=draw(_FLOAT), child_cpu_s=draw(_FLOAT), run_s=draw(_FLOAT), wait_s=draw(_FLOAT),
        slices=draw(_INT), vcs=draw(st.one_of(st.none(), _INT)),
        ivcs=draw(st.one_of(st.none(), _INT)), io_bytes=draw(_INT), spawned=draw(_INT),
        wait_source=draw(st.sampled_from(["taskstats", "schedstat"])),
        first_seen=draw(st.one_of(st.just(t - 1), _FLOAT)))


@st.composite
def _samples(draw: st.DrawFn) -> list[Sample]:
    out = []
    pids = draw(st.lists(_PID, max_size=40, unique=True))
    ncores = draw(st.sampled_from([1, 2, 16, 17, 64]))
    t = 1000.0
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        t += draw(st.sampled_from([0.25, 1.0]))
        psi_names = draw(st.one_of(st.just(["cpu", "io", "memory"]),
                                   st.lists(_STR, max_size=40)))
        out.append(Sample(
            t=t, dt=draw(st.one_of(st.just(1.0), _FLOAT)), wall=draw(_FLOAT),
            cpu_util=[draw(_FLOAT) for _ in range(ncores)],
            util=draw(_FLOAT), iowait=draw(_FLOAT), ctxt_rate=draw(_FLOAT),
            fork_rate=draw(_FLOAT), procs_running=draw(_INT), procs_blocked=draw(_INT),
            load=(draw(_FLOAT), draw(_FLOAT), draw(_FLOAT)),
            psi={name: tuple(draw(_FLOAT) for _ in range(6)) for name in psi_names},  # type: ignore[misc]
            rq_wait=draw(_FLOAT), nprocs=draw(_INT), cost_s=draw(_FLOAT),
            procs={pid: draw(_delta(pid, t)) for pid in pids}))
    return out


def _strict(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise AssertionError(f"{name} in a summary: not JSON")

    return json.loads(text, parse_constant=no_constant)


@settings(max_examples=200, deadline=None)
@given(samples=st.one_of(st.just([]), _samples()), notes=st.lists(_STR, max_size=20),
       top_n=st.integers(min_value=1, max_value=2000))
def test_brief_fits_the_limit_for_any_samples(samples: list[Sample], notes: list[str],
                                               top_n: int) -> None:
    out = summary.build(samples, "brief", top_n, notes, rate_hz=1.0)
    text = json.dumps(out)
    assert len(text.encode()) <= BRIEF_LIMIT, text
    assert _strict(text) == out and out["v"] == 1
    if samples:
        # Every key is still there (possibly null): an agent's parser does not change.
        assert {"win", "n", "cpu", "util", "load", "psi", "rqwait", "cs", "forks", "top",
                "notes"} <= set(out)
        assert set(out.get("cut", [])) <= set(out) - {"v", "cut"}


def test_a_summary_of_real_figures_is_not_cut() -> None:
    # The last resort (blanking values) is for hostile figures only.
    t = 1000.0
    procs = {p: ProcDelta(pid=p, comm="x" * 15, ppid=1, pgrp=p, state="R", threads=1,
                          cgroup="/system.slice/some-service-with-a-long-name.service",
                          cpu_s=0.5, child_cpu_s=0.0, run_s=0.5, wait_s=0.1, slices=10,
                          vcs=None, ivcs=None, io_bytes=0, spawned=0, wait_source="schedstat",
                          first_seen=t - 1) for p in range(1000, 1050)}
    samples = [Sample(t=t, dt=1.0, wall=1.7e9, cpu_util=[0.5] * 16, util=0.5, iowait=0.0,
                      ctxt_rate=12345.0, fork_rate=3.0, procs_running=2, procs_blocked=0,
                      load=(1.5, 1.2, 1.0),
                      psi={r: (1.0, 2.0, 0.5, 0.25, 0.01, 0.0) for r in ("cpu", "io", "memory")},
                      rq_wait=0.2, nprocs=300, cost_s=0.001, procs=procs)]
    out = summary.build(samples, "brief", 8, ["taskstats: unavailable (not root)"], 1.0)
    assert "cut" not in out and len(out["top"]) >= 3 and out["notes"]
    assert len(json.dumps(out).encode()) <= BRIEF_LIMIT


def test_figures_that_are_not_finite_are_null_at_every_level() -> None:
    t = 1000.0
    nan, inf = float("nan"), float("inf")
    samples = [Sample(t=t, dt=1.0, wall=1.7e9, cpu_util=[nan, inf], util=nan, iowait=inf,
                      ctxt_rate=inf, fork_rate=nan, procs_running=1, procs_blocked=0,
                      load=(inf, nan, 1.0), psi={"cpu": (nan, inf, 0, 0, nan, 0)},
                      rq_wait=nan, nprocs=1, cost_s=nan)]
    for detail in summary.DETAILS:
        out = summary.build(samples, detail, 8, [], 1.0)
        assert _strict(json.dumps(out))["cs"] is None
        assert out["cpu"] == [None, None] and out["util"] is None


def test_hostile_figures_are_blanked_and_named_in_cut() -> None:
    # Numbers hundreds of digits long and 40 PSI resources: without top
    # entries and notes this is still several KB, so values are blanked.
    t, big = 1000.0, 1.7e308
    samples = [Sample(t=t, dt=1.0, wall=1.7e9, cpu_util=[big] * 16, util=big, iowait=big,
                      ctxt_rate=big, fork_rate=big, procs_running=1, procs_blocked=0,
                      load=(big, big, big),
                      psi={f"resource-{i}-é": (big,) * 6 for i in range(40)},
                      rq_wait=big, nprocs=1, cost_s=0.0)]
    out = summary.build(samples, "brief", 8, ["a note"] * 50, 1.0)
    text = json.dumps(out)
    assert len(text.encode()) <= BRIEF_LIMIT, text
    assert out["psi"] is None and out["cut"] == ["psi"]  # the largest went first, and sufficed
    assert out["notes"] == [] and out["v"] == 1
    assert out["util"] == 1.7e308  # small values stay
