"""kill -9 of the daemon between (and inside) the parts' applies; the restart restores both.

A scheduler+io policy through the real daemon (forced token: what is tested
is the crash, not the verifier), with fault injection (``[debug]
fault_injection``): the deployer's ``after_part_apply`` kills it right after
the scheduler part applied and before the io part; ``io_after_write:2``
kills it inside the io part's apply (the scheduler part applied, the io
part half).  The restarted daemon restores every journaled value of every
part at start-up and marks the deployment reverted.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from plugins.io import blockdev, ioprio
from plugins.io.sandbox import ScratchDevice
from tests.deploy.conftest import FAST, forced_token
from tests.harness import call, calls_as, wait_until
from tests.multi.conftest import ioprio_of, nice_of, threads
from tests.multi.test_multi_deploy import combined


@pytest.mark.slow
@pytest.mark.parametrize("env", [{"SCHEDCP_FAULT_AT": "after_part_apply"},
                                 {"SCHEDCP_FAULT": "io_after_write:2"}],
                         ids=["between-parts", "inside-second-part"])
def test_daemon_killed_mid_policy_restores_every_part_at_restart(
        env: dict[str, str], start_daemon, loopdev: ScratchDevice,
        writer: subprocess.Popen[bytes], tmp_path: Path) -> None:
    dev = loopdev.name
    before = {k: blockdev.current(dev, k) for k in ("scheduler", "nr_requests")}
    sched = "kyber" if before["scheduler"] != "kyber" else "mq-deadline"
    tids = threads(ioprio.Selector([], [writer.pid]).scan())
    nice, prio = nice_of(tids), ioprio_of(tids)
    delayacct = Path("/proc/sys/kernel/task_delayacct")
    accounting = delayacct.read_text()
    state = tmp_path / "state"
    first = start_daemon(FAST + "[debug]\nfault_injection = true\n", state_dir=state, env=env)
    text = combined("multi-crash", writer.pid,
                    f'name = "{dev}"\nscheduler = "{sched}"\nnr_requests = 16')
    policy_id = call(first.address, "SubmitPolicy", "s", text)
    token = forced_token(state, first.address, policy_id)
    calls_as(0, first.address, [["Deploy", "s", [token]]])
    assert first.proc.wait(90) == -signal.SIGKILL, first.log_text()
    point = next(iter(env.values())).split(":")[0]
    assert f"SIGKILL at {point}" in first.log_text()
    live = [t for t in tids if t in nice_of(threads([writer.pid]))]
    # The scheduler part was applied and stayed (nobody restored it: the daemon died).
    assert live and set(nice_of(live).values()) == {7}
    if "SCHEDCP_FAULT" in env:  # the io part had begun: its first device write stayed
        assert blockdev.current(dev, "scheduler") == sched
    else:  # between the parts: the io part wrote nothing yet
        assert blockdev.current(dev, "scheduler") == before["scheduler"]

    second = start_daemon(FAST, address=first.address, state_dir=state)
    wait_until(lambda: nice_of(live) == {t: nice[t] for t in live}, what="nice restored")
    assert {k: blockdev.current(dev, k) for k in before} == before
    assert ioprio_of(live) == {t: prio[t] for t in live}
    assert delayacct.read_text() == accounting
    [dep] = json.loads(call(second.address, "ListDeployments"))
    info = json.loads(call(second.address, "GetDeployment", "s", dep["id"]))
    assert info["state"] == "reverted" and info["subsystem"] == "scheduler+io", info
