"""Workloads and helpers for deployment tests: real processes the tests own."""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schedcpd.repository import parse_document, policy_scope
from schedcpd.tokens import PREFIX, KeyStore, digest_of
from tests.harness import FAST_WINDOWS, Procs, call, wait_workers_ready

FAST = f"""[metrics]
enabled = false
{FAST_WINDOWS}[breaker]
stall_seconds = 10.0
"""
# Tests whose policies put CPU hogs at SCHED_IDLE on a host other tests load:
# a SCHED_IDLE donor may get no CPU for seconds by design, so the stall guard
# is lenient here (tests/deploy/test_stall.py sets it back to 2 s).


def _quick(config: str) -> str:
    for key, seconds in (("baseline", "1.5"), ("canary", "2.0"), ("full", "2.0")):
        line = f"{key}_seconds = {seconds}\n"
        assert line in config, f"FAST_WINDOWS no longer sets {line!r}"
        config = config.replace(line, f"{key}_seconds = 0.3\n")
    return config


QUICK = _quick(FAST)
"""FAST with a baseline, canary and full window of 0.3 s each: for tests of what
happens around a deployment's steps (a crash at one, the restart after), not of
what the breaker judges.  At the breaker's default rate (10 Hz) a 0.3 s baseline
holds fewer samples than its ``min_samples`` (8), so no guard is judged: the
deployment goes through every step to active in about a second, and the host's
load cannot trip it on the way (which would change the steps it goes through)."""


class Workload(Procs):
    """A periodic waker (the latency probe) and CPU hogs, as child processes."""

    def __init__(self, hogs: int) -> None:
        super().__init__("schedcp-deploy-", new_session=False)  # one autogroup: see Procs
        self.probe = self.worker("periodic")
        self.hogs = [self.worker("spin") for _ in range(hogs)]


@pytest.fixture
def workload() -> Iterator[Workload]:
    w = Workload(hogs=os.cpu_count() or 2)
    try:
        wait_workers_ready(w.procs)
        yield w
    finally:
        w.stop()


def policy_text(name: str, groups: list[tuple[str, list[int], str]]) -> str:
    """A policy with groups (name, pids, TOML inline table of task knobs)."""
    out = [f'[policy]\nname = "{name}"\ndescription = "deployment test policy {name}"\n']
    for group, pids, task in groups:
        out.append(f'[[group]]\nname = "{group}"\nmatch = {{ pid = {pids} }}\n'
                   f"task = {task}\ndescendants = false\n")
    return "\n".join(out)


def verified_token(address: str, text: str) -> tuple[str, str]:
    pid = call(address, "SubmitPolicy", "s", text)
    token, report = call(address, "VerifyPolicy", "s", pid)
    assert token, json.dumps(json.loads(report), indent=1)
    return pid, token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forced_token(state_dir: Path, address: str, policy_id: str, uid: int = 0,
                 scope: dict[str, Any] | None = None,
                 artifact: dict[str, str] | None = None, ttl: float = 600) -> str:
    """A token signed with the daemon's key for a policy that was NOT verified.

    Test-only "forced deployment" path (the issue's fault-injection tests):
    it needs the daemon's private key from its state directory, which only
    root on the daemon's host can read.  ``scope`` defaults to the policy's
    own (what the verifier would sign); another one tests that Deploy
    refuses it.  ``artifact`` is the object binding of a T2 token; ``ttl``
    its lifetime in seconds.
    """
    policy = json.loads(call(address, "GetPolicy", "s", policy_id))
    key = KeyStore(state_dir / "keys").current()
    assert key is not None and key.private is not None
    if scope is None:
        scope = policy_scope(parse_document(policy["document"], policy_id))
    now = time.time()
    claims = {"kid": key.kid, "policy_id": policy["id"],
              "policy_digest": digest_of(policy["document"]),
              "subsystem": policy["subsystem"], "scope": scope,
              "report_digest": "forced-deployment-test-only", "iat": now,
              "exp": now + ttl, "nonce": secrets.token_hex(16), "uid": uid}
    if artifact is not None:
        claims["artifact"] = artifact
    signed = f"{PREFIX}.{_b64(json.dumps(claims, sort_keys=True).encode())}"
    return f"{signed}.{_b64(key.private.sign(signed.encode()))}"
