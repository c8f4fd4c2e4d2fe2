"""The policy flow through a real daemon: drop-ins, submit, verify, token, CLI."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from tests.deploy.conftest import FAST
from tests.harness import ROOT, call, call_error, outcome, wait_until

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


SHARED = """
[policy]
name = "{name}"
description = "a policy over one sleeper"

[[group]]
name = "sleeper"
match = {{ pid = [{pid}] }}
task = {{ nice = {nice} }}
descendants = false
"""


def test_dropin_directory_is_live(start_daemon, tmp_path: Path) -> None:
    dropin = tmp_path / "policies.d"
    dropin.mkdir()
    proc = start_daemon(f'[metrics]\nenabled = false\n[repository]\ndropin_dir = "{dropin}"\n')

    def names() -> set[str]:
        listed = json.loads(call(proc.address, "ListPolicies", "s", ""))
        return {p["name"] for p in listed}

    assert "latency-protect" in names()  # built-ins are there
    (dropin / "mine.toml").write_text(GOOD)
    wait_until(lambda: "dbus-test-protect" in names())
    (dropin / "broken.toml").write_text(GOOD.replace('"idle"', '"turbo"'))

    def rejected() -> dict:
        status = json.loads(call(proc.address, "GetStatus"))
        return status["policy_files"]["rejected"]

    wait_until(lambda: str(dropin / "broken.toml") in rejected())
    assert "group[1].task.policy" in rejected()[str(dropin / "broken.toml")]
    assert "dbus-test-protect" in names()  # the bad file stopped nothing else

    def versions() -> dict[str, str]:
        listed = json.loads(call(proc.address, "ListPolicies", "s", "spinner waker"))
        return {p["id"]: p["state"] for p in listed if p["name"] == "dbus-test-protect"}

    [first] = versions()
    (dropin / "mine.toml").write_text(GOOD.replace("slice_us = 500", "slice_us = 700"))
    wait_until(lambda: len(versions()) == 1 and first not in versions())
    old = json.loads(call(proc.address, "GetPolicy", "s", first))
    assert old["state"] == "retired"
    (dropin / "mine.toml").unlink()
    wait_until(lambda: "dbus-test-protect" not in names())


def test_a_dropin_directory_made_after_start_is_loaded_and_watched(start_daemon,
                                                                   tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    dropin = etc / "schedcp" / "policies.d"  # neither it nor its parent exists yet
    proc = start_daemon(f'[metrics]\nenabled = false\n[repository]\ndropin_dir = "{dropin}"\n')

    def names() -> set[str]:
        listed = json.loads(call(proc.address, "ListPolicies", "s", ""))
        return {p["name"] for p in listed}

    dropin.parent.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "mine.toml").write_text(GOOD)
    staging.rename(dropin)  # appears with a file already in it (as a package unpacks)
    wait_until(lambda: "dbus-test-protect" in names())
    (dropin / "mine.toml").unlink()  # and from then on it is watched
    wait_until(lambda: "dbus-test-protect" not in names())
    assert f"watching {dropin} for changes" in proc.log_text()


def test_submit_verify_and_inspect_token(daemon, test_users: dict[str, int]) -> None:
    member = test_users["member"]
    pid = call(daemon.address, "SubmitPolicy", "s", GOOD, uid=member)
    policy = json.loads(call(daemon.address, "GetPolicy", "s", pid, uid=member))
    assert policy["provenance"] == "user" and policy["uid"] == member
    assert policy["source"] == f"uid {member}"
    # verify is not a group action by default: the member is refused...
    assert call_error(daemon.address, "VerifyPolicy", "s", pid, uid=member).endswith(
        "AccessDenied")
    # ...root verifies (schema, static, kernel skipped for T1, dynamic sandbox),
    # here through schedcpctl (VerifyPolicy as root; one dynamic test, not two).
    out = subprocess.run(
        [str(Path(sys.executable).parent / "schedcpctl"), "--bus", daemon.address, "--json",
         "policy", "verify", pid[:12]], capture_output=True, text=True, cwd=ROOT)
    verdict = json.loads(out.stdout)
    report = verdict["report"]
    assert report["passed"], json.dumps(report, indent=1)
    assert [s["stage"] for s in report["stages"]] == ["schema", "static", "kernel", "dynamic"]
    assert report["stages"][2]["skipped"].startswith("T1")
    assert json.loads(call(daemon.address, "GetPolicy", "s", pid))["state"] == \
        "verified"
    inspect = subprocess.run(
        [str(Path(sys.executable).parent / "schedcpctl"), "--bus", daemon.address, "token",
         "inspect", verdict["token"]], capture_output=True, text=True, cwd=ROOT)
    assert inspect.returncode == 0, inspect.stderr
    assert "signature valid" in inspect.stdout
    assert f"policy_id: {pid}" in inspect.stdout


def test_starvation_prone_policy_fails_with_a_reason(daemon) -> None:
    pid = call(daemon.address, "SubmitPolicy", "s", STARVING)
    token, report = call(daemon.address, "VerifyPolicy", "s", pid)
    report = json.loads(report)
    assert token == "" and not report["passed"]
    static = report["stages"][1]
    assert static["stage"] == "static" and not static["passed"]
    [finding] = [f for f in static["findings"] if f["code"] == "starvation-risk"]
    assert finding["field"] == "group[1]"
    assert "depends on it" in finding["message"]
    assert json.loads(call(daemon.address, "GetPolicy", "s", pid))["state"] == \
        "candidate"


def ctl(address: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "schedcpctl"), "--bus", address, *args],
        capture_output=True, text=True, cwd=ROOT, input=stdin)


def test_cli_policy_commands(daemon, tmp_path: Path) -> None:
    listed = ctl(daemon.address, "policy", "list", "kernel", "compile", "make")
    assert listed.returncode == 0, listed.stderr
    # The build policies of both tracks lead the list, each with its track.
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert {(r[1], r[2]) for r in rows[:2]} == {("parallel-build", "T1"), ("scxl-build", "T2")}, \
        listed.stdout
    found = json.loads(ctl(daemon.address, "--json", "policy", "list", "make -j").stdout)
    top = next(p for p in found if p["track"] == "T1")
    assert top["name"] == "parallel-build" and top["score"] > 0
    shown = ctl(daemon.address, "policy", "show", top["id"][:12])
    assert shown.returncode == 0 and 'name = "parallel-build"' in shown.stdout
    path = tmp_path / "cli.toml"
    path.write_text(GOOD.replace("dbus-test-protect", "cli-test"))
    submitted = ctl(daemon.address, "policy", "submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    pid = submitted.stdout.strip()
    assert len(pid) == 64
    again = ctl(daemon.address, "policy", "submit", "-", stdin=path.read_text())
    assert again.stdout.strip() == pid  # same text, same version
    bad = ctl(daemon.address, "policy", "submit", "-",
              stdin=path.read_text().replace('"idle"', '"turbo"'))
    assert bad.returncode == 5 and "group[1].task.policy" in bad.stderr
    history = json.loads(ctl(daemon.address, "--json", "policy", "history", pid).stdout)
    assert history == {"policy_id": pid, "name": "cli-test", "state": "candidate",
                       "outcomes": [], "antipatterns": []}
    promoted = ctl(daemon.address, "policy", "promote", pid[:10])
    assert promoted.returncode == 0 and "is now proven" in promoted.stdout
    retired = ctl(daemon.address, "policy", "retire", pid[:10])
    assert retired.returncode == 0 and "is now retired" in retired.stdout
    assert pid not in ctl(daemon.address, "policy", "list").stdout
    verify = ctl(daemon.address, "policy", "verify", pid)
    assert verify.returncode == 1 and "Conflict" in verify.stderr  # retired: not verified


def test_token_inspect_flags_a_bad_signature(daemon) -> None:
    pid = call(daemon.address, "SubmitPolicy", "s",
               GOOD.replace("dbus-test-protect", "inspect-test"))
    token, _ = call(daemon.address, "VerifyPolicy", "s", pid)
    assert token, _
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-6]}AAAAAA"
    out = ctl(daemon.address, "token", "inspect", "-", stdin=forged)
    assert out.returncode == 0 and out.stdout.startswith("signature INVALID")
    assert f"policy_digest: {pid}" in out.stdout and "expires in" in out.stdout
    assert ctl(daemon.address, "token", "inspect", "schedcp1.e30.e30").returncode == 5


def test_deeply_nested_input_is_refused_by_name(daemon) -> None:
    """Nesting the parsers recurse through: a named rejection, not an internal error."""
    deep = outcome(daemon.address, "SubmitPolicy", "s", "a = " + "[" * 3000 + "]" * 3000)
    assert deep["error"] == "org.schedcp.Control1.Error.InvalidArgument", deep
    assert "uid 0: not valid TOML" in deep["message"] and "nested too deeply" in deep["message"]
    payload = base64.urlsafe_b64encode(b"[" * 6000).rstrip(b"=").decode()
    token = outcome(daemon.address, "Deploy", "s", f"schedcp1.{payload}.AAAA")
    assert token["error"] == "org.schedcp.Control1.Error.InvalidToken", token


def test_daemon_makes_exports_and_rotates_its_key(start_daemon) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n")
    keydir = proc.state_dir / "keys"
    [private] = keydir.glob("*.key")  # made on the first start
    assert keydir.stat().st_mode & 0o077 == 0
    assert private.stat().st_mode & 0o777 == 0o600 and private.stat().st_uid == 0
    [exported] = json.loads(call(proc.address, "GetVerifierKeys"))
    assert exported["kid"] == private.stem and exported["retired"] is None
    assert (keydir / f"{private.stem}.pub").stat().st_mode & 0o777 == 0o644
    new = call(proc.address, "RotateVerifierKey")
    # The old key signed no token: nothing needs its public half, and its
    # private half is destroyed at rotation (tests/policy/test_key_rotation.py).
    [current] = json.loads(call(proc.address, "GetVerifierKeys"))
    assert current["kid"] == new != private.stem and current["retired"] is None
    assert (keydir / f"{new}.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in keydir.glob("*.*") if p.suffix in (".key", ".pub")) == [
        f"{new}.key", f"{new}.pub"]


def test_verification_does_not_block_the_bus(daemon) -> None:
    pid = call(daemon.address, "SubmitPolicy", "s",
               GOOD.replace("dbus-test-protect", "busy-test"))
    result: list[dict] = []
    worker = threading.Thread(target=lambda: result.append(
        outcome(daemon.address, "VerifyPolicy", "s", pid)))
    before = set(Path("/tmp").glob("schedcp-verify-*"))
    worker.start()
    # Wait until the dynamic stage's sandbox exists, then the bus must still answer.
    wait_until(lambda: bool(set(Path("/tmp").glob("schedcp-verify-*")) - before), 60)
    status = json.loads(call(daemon.address, "GetStatus"))
    listed = json.loads(call(daemon.address, "ListPolicies", "s", "busy"))
    still_running = worker.is_alive()
    worker.join(120)
    assert status["pid"] and listed[0]["name"] == "busy-test"
    assert still_running, "verification ended before the other calls were answered"
    assert "ok" in result[0], result


def test_dynamic_tests_run_one_at_a_time(daemon) -> None:
    """Two verifications at once: the second sandbox waits for the first one."""
    pids = [call(daemon.address, "SubmitPolicy", "s",
                 GOOD.replace("dbus-test-protect", f"queue-test-{i}")) for i in range(2)]
    results: list[dict] = []
    workers = [threading.Thread(target=lambda p=p: results.append(
        outcome(daemon.address, "VerifyPolicy", "s", p))) for p in pids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
    dynamic = [json.loads(r["ok"][1])["stages"][3] for r in results]
    assert all(d["stage"] == "dynamic" and d["passed"] for d in dynamic), dynamic
    first, second = sorted(dynamic, key=lambda d: d["started_at"])
    # The sandboxes did not overlap: the later one started after the earlier ended.
    assert first["started_at"] < first["ended_at"] <= second["started_at"], dynamic


def test_conflict_with_a_live_deployment_and_changed_policy(start_daemon) -> None:
    proc = start_daemon(FAST)
    target = subprocess.Popen(["sleep", "300"])
    try:
        first = SHARED.format(name="live-first", nice=3, pid=target.pid)
        pid1 = call(proc.address, "SubmitPolicy", "s", first)
        token, report = call(proc.address, "VerifyPolicy", "s", pid1)
        assert token, report
        dep = call(proc.address, "Deploy", "s", token)
        second = SHARED.format(name="live-second", nice=4, pid=target.pid)
        pid2 = call(proc.address, "SubmitPolicy", "s", second)
        token2, report2 = call(proc.address, "VerifyPolicy", "s", pid2)
        static = json.loads(report2)["stages"][1]
        assert token2 == "" and [f["code"] for f in static["findings"]] == \
            ["conflicts-active"], static
        assert "'live-first'" in static["findings"][0]["message"]
        call(proc.address, "Rollback", "s", dep)
        wait_until(lambda: json.loads(call(proc.address, "GetDeployment", "s", dep))
                   ["state"] in ("reverted", "failed"), 30)
        # With the first one gone the second passes; then its stored text is edited
        # behind the daemon's back, and Deploy refuses the token by name.
        token2, report2 = call(proc.address, "VerifyPolicy", "s", pid2)
        assert token2, report2
        db = sqlite3.connect(proc.state_dir / "schedcpd.db")
        with db:
            db.execute("UPDATE policies SET document = replace(document, 'nice = 4', "
                       "'nice = -20') WHERE id = ?", [pid2])
        db.close()
        assert call_error(proc.address, "Deploy", "s", token2) == \
            "org.schedcp.Control1.Error.PolicyChanged"
    finally:
        target.kill()
        target.wait()
