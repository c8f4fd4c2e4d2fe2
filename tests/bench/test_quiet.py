"""Foreign-load measurement on the real host: a spinner we start is foreign unless ours."""

from __future__ import annotations

import subprocess
import sys
import time

from schedcp_bench import quiet

SPIN = [sys.executable, "-c", "while True: pass"]


def _two_meters(own_pid: int, seconds: float = 1.0) -> tuple[quiet.LoadSample,
                                                               quiet.LoadSample]:
    """The same interval measured without and with ``own_pid`` counted as ours."""
    foreign = quiet.LoadMeter()
    ours = quiet.LoadMeter([own_pid])
    foreign.start()
    ours.start()
    time.sleep(seconds)
    return foreign.stop(), ours.stop()


def test_a_spinning_child_is_foreign_until_it_stops() -> None:
    spinner = subprocess.Popen(SPIN)
    try:
        time.sleep(0.3)
        not_ours, ours = _two_meters(spinner.pid)
    finally:
        spinner.kill()
        spinner.wait()
    spinner_cpus = ours.own_cpus - not_ours.own_cpus
    # it ran (even on a busy 2-core host it gets a fair share of a CPU) ...
    assert spinner_cpus > 0.2, (not_ours, ours)
    # ... and counts as foreign load unless it is declared ours
    assert not_ours.foreign_cpus >= 0.8 * spinner_cpus, (not_ours, ours)
    assert ours.foreign_cpus < not_ours.foreign_cpus - 0.5 * spinner_cpus
    assert not_ours.total_cpus > 0.2 and 0 <= ours.foreign_cpus <= ours.total_cpus
    # once it stopped, declaring its pid ours changes nothing: its load is gone
    after_not_ours, after_ours = _two_meters(spinner.pid, 0.5)
    assert abs(after_ours.own_cpus - after_not_ours.own_cpus) < 0.05


def test_children_reaped_by_our_process_are_ours() -> None:
    """A short job our process runs and reaps counts through cutime/cstime."""
    meter = quiet.LoadMeter()
    meter.start()
    # 0.5 s of CPU, not of wall time: on a loaded host a wall-clock loop may
    # get less than the 0.2 s asserted below.
    subprocess.run([sys.executable, "-c",
                    "import time\nwhile time.process_time() < 0.5: pass"], check=True)
    sample = meter.stop()
    assert sample.own_cpus * sample.seconds > 0.2, sample


def test_wait_quiet_is_bounded_and_charged() -> None:
    policy = quiet.QuietPolicy(max_foreign_cpus=-1.0, sample_seconds=0.2,
                               max_wait_seconds=0.5, budget_seconds=0.7)
    t0 = time.monotonic()
    sample, waited = quiet.wait_quiet(policy, [])
    assert policy.noisy(sample)              # a negative threshold is never quiet
    assert time.monotonic() - t0 < 5
    assert waited > 0 and policy.spent == waited
    for _ in range(4):
        quiet.wait_quiet(policy, [])
    # the run's budget is spent (at most one sample over): no more waiting
    assert policy.spent <= policy.budget_seconds + policy.sample_seconds + 0.2
    t1 = time.monotonic()
    _, waited = quiet.wait_quiet(policy, [])
    assert waited == 0.0 and time.monotonic() - t1 < 2
    assert quiet.psi_some_avg10() is None or quiet.psi_some_avg10() >= 0  # type: ignore[operator]
