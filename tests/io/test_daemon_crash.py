"""kill -9 of the daemon inside an io write, then restart: the journal puts every value back.

The deployment goes through the real daemon (forced token: what is tested
is the crash, not the verifier); fault injection (``[debug]
fault_injection``) SIGKILLs it right after the journal commit of a write
and, in the other case, right after the kernel write, of the third write
(the first is the guards' kernel.task_delayacct, the second the scheduler).  The restarted daemon
restores at start-up, before it takes the bus name.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from plugins.io import blockdev, ioprio
from plugins.io.sandbox import ScratchDevice
from tests.deploy.conftest import FAST, forced_token
from tests.harness import call, calls_as


@pytest.mark.slow
@pytest.mark.parametrize("point", ["io_after_journal_commit:3", "io_after_write:3"])
def test_daemon_killed_inside_an_io_write_restores_at_restart(
        point: str, start_daemon, loopdev: ScratchDevice, tmp_path: Path) -> None:
    dev = loopdev.name
    before = {k: blockdev.current(dev, k) for k in ("scheduler", "nr_requests",
                                                    "read_ahead_kb")}
    sched = "kyber" if before["scheduler"] != "kyber" else "mq-deadline"
    delayacct = Path("/proc/sys/kernel/task_delayacct")
    accounting = delayacct.read_text()
    state = tmp_path / "state"
    first = start_daemon(FAST + "[debug]\nfault_injection = true\n", state_dir=state,
                         env={"SCHEDCP_FAULT": point})
    text = (f'[policy]\nname = "io-crash"\nsubsystem = "io"\ndescription = "crash test"\n\n'
            f'[[device]]\nname = "{dev}"\nscheduler = "{sched}"\nnr_requests = 16\n'
            f'read_ahead_kb = 256\n')
    policy_id = call(first.address, "SubmitPolicy", "s", text)
    token = forced_token(state, first.address, policy_id)
    calls_as(0, first.address, [["Deploy", "s", [token]]])
    assert first.proc.wait(60) == -signal.SIGKILL, first.log_text()
    assert f"fault injection: SIGKILL at {point.split(':')[0]}" in first.log_text()
    assert {k: blockdev.current(dev, k) for k in before} != before  # the first write stayed

    second = start_daemon(FAST, address=first.address, state_dir=state)
    assert {k: blockdev.current(dev, k) for k in before} == before
    assert delayacct.read_text() == accounting  # the guards' write (the first) too
    [dep] = json.loads(call(second.address, "ListDeployments"))
    assert json.loads(call(second.address, "GetDeployment", "s", dep["id"]))["state"] \
        == "reverted"
    assert ioprio.get(second.proc.pid) is not None  # the daemon runs on
