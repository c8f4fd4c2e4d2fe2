"""Fuzz the D-Bus API of a real schedcpd on a private bus (issue #24).

tests/fuzz_client.py sends seeded random calls — hostile values in each
method's own signature, wrong signatures, unknown members, interfaces and
objects, property writes, arguments over the size limit, and the
state-changing path (submit, verify, deploy, roll back, rotate the key) with
a policy whose selector matches no process — as root and as ``nobody``,
four runs of 2 600 calls.  The daemon's state directory is the test's own.

Every reply must be a success or an error named org.schedcp.* or
org.freedesktop.DBus.Error.* (and not Internal: that is an engine method
failing in a way it should not), every call must be answered, the daemon
must still answer GetStatus afterwards, and its resident memory must not
grow by more than a generous bound over the second half of the run.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import calls_as, run_as

CONFIG = """[metrics]
enabled = false
[verifier]
dynamic_seconds = 0.5
[deployer]
baseline_seconds = 0.5
canary_seconds = 0.5
full_seconds = 0.5
backoff_seconds = 1
"""
CALLS_PER_RUN = 2600
# Resident memory may grow over the second half of the run by at most this
# (kB): generous, for allocator noise and caches, far below a per-call leak
# (the first measured run grew ~1 MB over its second 5 000 calls).
SECOND_HALF_GROWTH_KB = 12 * 1024


@pytest.fixture(scope="module")
def fuzz_client() -> Iterator[Path]:
    """tests/fuzz_client.py where ``nobody`` can read it."""
    where = Path(tempfile.mkdtemp(prefix="schedcp-fuzz-"))
    where.chmod(0o755)
    client = where / "fuzz_client.py"
    shutil.copy(Path(__file__).parents[1] / "fuzz_client.py", client)
    client.chmod(0o644)
    yield client
    shutil.rmtree(where, ignore_errors=True)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _fuzz(uid: int, address: str, client: Path, seed: int, scenario: bool) -> dict[str, Any]:
    argv = [sys.executable, str(client), address, str(seed), str(CALLS_PER_RUN)]
    out = run_as(uid, [*argv, *(["--scenario"] if scenario else [])], timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.stdout)
    return report


@pytest.mark.slow
def test_hostile_calls_get_named_answers_and_the_daemon_stays_well(
        start_daemon, test_users: dict[str, int], fuzz_client: Path) -> None:
    proc = start_daemon(CONFIG)
    assert proc.proc is not None
    pid = proc.proc.pid
    # Warm up (first calls load the repository, resolve callers, ...).
    assert "ok" in calls_as(0, proc.address, [["GetStatus", "", []]])[0]
    rss = [_rss_kb(pid)]
    reports: list[tuple[str, dict[str, Any]]] = []
    for half, seeds in enumerate(((11, 12), (13, 14))):
        for user, seed in zip(("root", "nobody"), seeds, strict=True):
            report = _fuzz(test_users[user], proc.address, fuzz_client, seed,
                           scenario=user == "root")
            reports.append((f"{user} half {half + 1}", report))
        rss.append(_rss_kb(pid))

    total: Counter[str] = Counter()
    for name, report in reports:
        assert report["bad"] == [], (name, report["bad"])
        assert report["status_ok"], name
        assert report["calls"] >= CALLS_PER_RUN, name
        total.update(report["outcomes"])
    assert sum(total.values()) >= 10_000
    # The run did reach the parts it means to: successes, refusals of every kind.
    for outcome in ("ok", "org.schedcp.Control1.Error.InvalidArgument",
                    "org.schedcp.Control1.Error.AccessDenied",
                    "org.schedcp.Control1.Error.NotFound",
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    "org.freedesktop.DBus.Error.PropertyReadOnly"):
        assert total[outcome] > 0, (outcome, total)
    # As root, the state-changing path went all the way through.
    walked = reports[0][1]["scenario"]
    assert [step[0] for step in walked] == [
        "SubmitPolicy", "VerifyPolicy", "PlanDeployment", "Deploy", "Deploy", "GetDeployment",
        "HoldDeployment", "ReleaseHold", "GetFeedback", "Rollback", "GetDeployment",
        "RotateVerifierKey"], walked
    # The daemon still answers, from a new connection, as before.
    status = calls_as(test_users["nobody"], proc.address, [["GetStatus", "", []]])[0]
    assert "ok" in status and json.loads(status["ok"])["caller"]["uid"] == test_users["nobody"]
    assert proc.proc.poll() is None
    assert "Traceback" not in proc.log_text()
    first, second = rss[1] - rss[0], rss[2] - rss[1]
    assert second <= SECOND_HALF_GROWTH_KB, f"VmRSS kB at start/half/end: {rss}"
    print(f"fuzz: {sum(total.values())} calls, VmRSS kB {rss} (+{first}, +{second}); {total}")
