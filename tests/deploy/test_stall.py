"""A stalled target: the breaker reverts a policy under which a target makes no progress."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.deploy.conftest import FAST, policy_text, verified_token
from tests.harness import Procs, call, wait_deployment


@pytest.fixture
def pinned() -> Iterator[tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]]:
    """A CPU-bound target on CPU 1 and three CPU hogs on CPU 0 (all ours)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    with Procs("schedcp-stall-", new_session=False) as procs:
        target, *hogs = (procs.worker("spin") for _ in range(4))
        os.sched_setaffinity(target.pid, {1})
        for hog in hogs:
            os.sched_setaffinity(hog.pid, {0})
        yield target, hogs


@pytest.mark.slow
def test_breaker_reverts_a_policy_that_stalls_its_target(start_daemon, pinned) -> None:
    target, _ = pinned
    # The spinner is CPU-bound and the policy deprioritises it, so it is a donor:
    # it may wait, but not stall.  The policy moves it to SCHED_IDLE on the CPU
    # the hogs saturate, where SCHED_IDLE gets no CPU for seconds at a time.
    proc = start_daemon(FAST.replace("stall_seconds = 10.0",
                                     "stall_seconds = 2.0\ninteractive_share = 0.05"))
    text = policy_text("deploy-stall", [("batch", [target.pid],
                                         '{ policy = "idle", affinity = "0" }')])
    _, token = verified_token(proc.address, text)
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"reverted", "failed"}, timeout=60)
    assert info["state"] == "reverted", info["events"]
    assert info["trip"]["guard"] == "stall", info["trip"]
    assert "had runnable threads but no CPU" in info["reason"]
    assert os.sched_getscheduler(target.pid) == os.SCHED_OTHER
    assert os.sched_getaffinity(target.pid) == {1}
