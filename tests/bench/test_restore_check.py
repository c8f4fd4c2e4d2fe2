"""The benchmark's restore check on real processes: a change that outlives a rollback shows."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from plugins.scheduler import tasks
from schedcp_bench import restore_check

THREADED = """
import sys, threading, time
threading.Thread(target=time.sleep, args=(300,), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()                     # then start one more thread
threading.Thread(target=time.sleep, args=(300,), daemon=True).start()
print("more", flush=True)
time.sleep(300)
"""


@pytest.fixture
def proc() -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", THREADED], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield p
    finally:
        p.kill()
        p.wait()


def test_a_changed_thread_is_listed_and_new_threads_are_not(
        proc: subprocess.Popen[str]) -> None:
    before = restore_check.snapshot([proc.pid])
    assert set(before) == set(tasks.threads(proc.pid)) and len(before) == 2
    assert restore_check.differences(before) == []
    worker = max(before)
    os.setpriority(os.PRIO_PROCESS, worker, 3)
    tasks.write_knob(worker, "timer_slack_ns", 1)
    then = before[worker]
    assert restore_check.differences(before) == [
        f"{then.comm} {worker}: nice was {then.values['nice']}, now 3",
        f"{then.comm} {worker}: timer_slack_ns was {then.values['timer_slack_ns']}, now 1"]
    os.setpriority(os.PRIO_PROCESS, worker, then.values["nice"])
    tasks.write_knob(worker, "timer_slack_ns", then.values["timer_slack_ns"])
    assert restore_check.differences(before) == []
    # A thread born after the snapshot is not compared, whatever it holds.
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "more"
    new = (set(tasks.threads(proc.pid)) - set(before)).pop()
    os.setpriority(os.PRIO_PROCESS, new, 4)
    assert restore_check.differences(before) == []
