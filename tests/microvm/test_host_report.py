"""How a guest host run is judged: which named error a report gives.

The reports are built here as the console parser would from the guest's
lines (``guest._parse``), so no guest is booted; tests/microvm/test_host.py
boots a real one.
"""

from __future__ import annotations

from plugins.scheduler.microvm import guest, host


def report(*lines: str, status: int = 0) -> guest.GuestResult:
    result = guest.GuestResult(accel="tcg", exit_status=status)
    for line in lines:
        guest._parse(result, line + "\n")
    return result


BOOT = '@@SCHEDCP:init {"event":"boot","kernel":"k","cpus":2,"uptime_s":5.1}'
BUS = '@@SCHEDCP:init {"event":"bus","uptime_s":5.3}'
READY = '@@SCHEDCP:init {"event":"schedcpd_ready","uptime_s":17.25}'
END = '@@SCHEDCP:init {"event":"end"}'


def test_a_complete_run_has_no_problem_and_reports_the_boot_time() -> None:
    result = report(BOOT, BUS, READY, END)
    assert host.problem(result) is None
    assert host.ready_seconds(result) == 17.25
    assert host.summary(result)["boot_to_schedcpd_s"] == 17.25


def test_no_boot_report_is_not_booted() -> None:
    error = host.problem(report("Kernel panic - not syncing: VFS: Unable to mount root fs"))
    assert error is not None and error.kind == "not-booted"
    assert "Unable to mount root fs" in str(error)


def test_a_bus_that_does_not_start_is_named_with_its_log() -> None:
    error = host.problem(report(BOOT, '@@SCHEDCP:init {"event":"bus_failed","uptime_s":35}',
                                "@@OUT:dbus-log Failed to start message bus: no socket", END))
    assert error is not None and error.kind == "bus-failed"
    assert "no socket" in str(error)


def test_a_schedcpd_that_exits_is_not_ready_with_its_log() -> None:
    error = host.problem(report(
        BOOT, BUS, '@@SCHEDCP:init {"event":"schedcpd_failed","uptime_s":20,"alive":0}',
        "@@OUT:schedcpd-log ERROR schedcpd: bad value for [bus] call_timeout_seconds", END))
    assert error is not None and error.kind == "schedcpd-not-ready"
    assert "exited" in str(error) and "call_timeout_seconds" in str(error)


def test_a_schedcpd_still_starting_at_the_deadline_is_not_ready() -> None:
    error = host.problem(report(
        BOOT, BUS, '@@SCHEDCP:init {"event":"schedcpd_failed","uptime_s":250,"alive":1}', END))
    assert error is not None and error.kind == "schedcpd-not-ready"
    assert "did not own its name in time" in str(error)


def test_a_guest_stopped_before_the_end_is_incomplete() -> None:
    error = host.problem(report(BOOT, BUS, READY, status=-9))
    assert error is not None and error.kind == "incomplete"
