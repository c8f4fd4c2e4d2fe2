"""The scheduler language's examples in the sched_ext micro-VM: all four verifier stages.

Stages 1-2 run in-process; stages 3-4 of every example share one guest boot
(:func:`scx_policy.verify_in_one_boot`, the same judgements as the
per-policy stages): about 55 s under TCG here for the four examples.  One
example also goes through a real daemon over D-Bus (VerifyPolicy: two
boots, about 25 s) to show a program policy gets a token.
"""

from __future__ import annotations

import json
import sys
import tomllib

import pytest

from plugins.scheduler import scx_policy
from plugins.scheduler.microvm import MicroVM
from tests.conftest import CLIENT_PROBE, run_as
from tests.harness import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
EXAMPLES = sorted((ROOT / "policies" / "t2").glob("scxl-*.toml"))


def test_every_example_passes_all_four_stages(vm: MicroVM) -> None:
    assert len(EXAMPLES) >= 4
    docs = [tomllib.loads(p.read_text()) for p in EXAMPLES]
    for path, doc in zip(EXAMPLES, docs, strict=True):
        assert scx_policy.validate(doc, path.name) == [], path
        static = scx_policy.static_check(doc)
        assert not [f for f in static if f["severity"] == "error"], (path, static)
    results = scx_policy.verify_in_one_boot(docs, 3, vm=vm)
    for path, result in zip(EXAMPLES, results, strict=True):
        assert result["kernel"] == [], (path, result["kernel"])
        dynamic = result["dynamic"]
        assert not [f for f in dynamic if f["severity"] == "error"], (path, dynamic)
        codes = {f["code"]: f for f in dynamic}
        assert {"workload", "scx-counters", "scheduler-stats"} <= set(codes), (path, codes)
        stats = codes["scheduler-stats"]["stats"]
        # the compiled scheduler counted what it did: every class has its counters
        program = tomllib.loads(tomllib.loads(path.read_text())["scx"]["program"])
        for cls in program["class"]:
            assert f"stat_{cls['name']}_dispatched" in stats, (path, stats)
        assert sum(v for k, v in stats.items() if k.endswith("_dispatched")) > 0, stats


def test_program_policy_gets_a_token_over_dbus(start_daemon, vm: MicroVM) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\ncall_timeout_seconds = 400\n")
    text = (ROOT / "policies" / "t2" / "scxl-latency-hogs.toml").read_text()
    out = run_as(0, [sys.executable, str(CLIENT_PROBE), proc.address,
                     json.dumps([["SubmitPolicy", "s", [text]]])])
    policy_id = json.loads(out.stdout)[0]["ok"]
    out = run_as(0, [sys.executable, str(CLIENT_PROBE), proc.address,
                     json.dumps([["VerifyPolicy", "s", [policy_id]]])], timeout=420)
    token, report_text = json.loads(out.stdout)[0]["ok"]
    report = json.loads(report_text)
    assert report["passed"], json.dumps(report, indent=1)[:6000]
    assert token.startswith("schedcp1.")
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["schema", "static", "kernel", "dynamic"]
    bounds = [f for f in stages["static"]["findings"] if f["code"] == "wait-bound"]
    assert {f["evidence"]["class"] for f in bounds} == {"interactive", "batch"}
    assert not stages["kernel"]["skipped"] and stages["kernel"]["passed"]
    codes = {f["code"] for f in stages["dynamic"]["findings"]}
    assert {"workload", "scx-counters", "scheduler-stats"} <= codes
