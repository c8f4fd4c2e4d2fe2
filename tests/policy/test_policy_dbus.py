"""The policy flow through a real daemon: drop-ins, submit, verify, token, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import calls_as
from tests.harness import ROOT

GOOD = """
[policy]
name = "dbus-test-protect"
description = "batch spinner to SCHED_IDLE beside a periodic waker"

[[group]]
name = "waker"
match = { comm = ["schedcp-waker"] }
task = { slice_us = 500 }

[[group]]
name = "batch"
match = { comm = ["schedcp-spin"] }
task = { policy = "idle" }
"""

# The latency-critical group's own dependency at SCHED_IDLE under a hog.
STARVING = """
[policy]
name = "dbus-test-starve"
description = "a web server whose database is put at SCHED_IDLE"

[[group]]
name = "web"
match = { comm = ["schedcp-web"] }
task = { nice = -5 }
depends_on = ["db"]

[[group]]
name = "db"
match = { comm = ["schedcp-db"] }
task = { policy = "idle" }
"""


def call(address: str, uid: int, member: str, signature: str = "", *body: object) -> dict:
    return calls_as(uid, address, [[member, signature, list(body)]])[0]


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_dropin_directory_is_live(start_daemon, tmp_path: Path) -> None:
    dropin = tmp_path / "policies.d"
    dropin.mkdir()
    proc = start_daemon(f'[metrics]\nenabled = false\n[repository]\ndropin_dir = "{dropin}"\n')

    def names() -> set[str]:
        listed = json.loads(call(proc.address, 0, "ListPolicies", "s", "")["ok"])
        return {p["name"] for p in listed}

    assert "latency-protect" in names()  # built-ins are there
    (dropin / "mine.toml").write_text(GOOD)
    wait_until(lambda: "dbus-test-protect" in names())
    (dropin / "broken.toml").write_text(GOOD.replace('"idle"', '"turbo"'))

    def rejected() -> dict:
        status = json.loads(call(proc.address, 0, "GetStatus")["ok"])
        return status["policy_files"]["rejected"]

    wait_until(lambda: str(dropin / "broken.toml") in rejected())
    assert "group[1].task.policy" in rejected()[str(dropin / "broken.toml")]
    (dropin / "mine.toml").unlink()
    wait_until(lambda: "dbus-test-protect" not in names())


def test_submit_verify_and_inspect_token(daemon, test_users: dict[str, int]) -> None:
    member = test_users["member"]
    pid = call(daemon.address, member, "SubmitPolicy", "s", GOOD)["ok"]
    policy = json.loads(call(daemon.address, member, "GetPolicy", "s", pid)["ok"])
    assert policy["provenance"] == "user" and policy["uid"] == member
    assert policy["source"] == f"uid {member}"
    # verify is not a group action by default: the member is refused...
    assert call(daemon.address, member, "VerifyPolicy", "s", pid)["error"].endswith(
        "AccessDenied")
    # ...root verifies (schema, static, kernel skipped for T1, dynamic sandbox).
    result = calls_as(0, daemon.address, [["VerifyPolicy", "s", [pid]]])[0]
    assert "ok" in result, result
    out = subprocess.run(
        [str(Path(sys.executable).parent / "schedcpctl"), "--bus", daemon.address, "--json",
         "policy", "verify", pid[:12]], capture_output=True, text=True, cwd=ROOT)
    verdict = json.loads(out.stdout)
    report = verdict["report"]
    assert report["passed"], json.dumps(report, indent=1)
    assert [s["stage"] for s in report["stages"]] == ["schema", "static", "kernel", "dynamic"]
    assert report["stages"][2]["skipped"].startswith("T1")
    assert json.loads(call(daemon.address, 0, "GetPolicy", "s", pid)["ok"])["state"] == \
        "verified"
    inspect = subprocess.run(
        [str(Path(sys.executable).parent / "schedcpctl"), "--bus", daemon.address, "token",
         "inspect", verdict["token"]], capture_output=True, text=True, cwd=ROOT)
    assert inspect.returncode == 0, inspect.stderr
    assert "signature valid" in inspect.stdout
    assert f"policy_id: {pid}" in inspect.stdout


def test_starvation_prone_policy_fails_with_a_reason(daemon) -> None:
    pid = call(daemon.address, 0, "SubmitPolicy", "s", STARVING)["ok"]
    token, report = call(daemon.address, 0, "VerifyPolicy", "s", pid)["ok"]
    report = json.loads(report)
    assert token == "" and not report["passed"]
    static = report["stages"][1]
    assert static["stage"] == "static" and not static["passed"]
    [finding] = [f for f in static["findings"] if f["code"] == "starvation-risk"]
    assert finding["field"] == "group[1]"
    assert "depends on it" in finding["message"]
    assert json.loads(call(daemon.address, 0, "GetPolicy", "s", pid)["ok"])["state"] == \
        "candidate"
