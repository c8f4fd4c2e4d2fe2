"""The scheduler language's examples in the sched_ext micro-VM: all four verifier stages.

Stages 1-2 run in-process; stages 3-4 of every example and of three
programs derived by rules share one guest boot
(:func:`scx_policy.verify_in_one_boot`, the same judgements as the
per-policy stages).  One
example also goes through a real daemon over D-Bus (VerifyPolicy: two
boots, about 25 s) to show a program policy gets a token.
"""

from __future__ import annotations

import time
import tomllib
from typing import Any

import pytest

from plugins.scheduler import scx_policy
from plugins.scheduler.microvm import MicroVM
from plugins.scheduler.scxlang.derive import derive
from tests.harness import ROOT, call, verify_passes_every_stage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
EXAMPLES = sorted((ROOT / "policies" / "t2").glob("scxl-*.toml"))


# Offline synthesis for three profiles (issue #20: latency beside hogs, build, long tail).
DERIVED = [derive("latency-beside-cpu-hogs", "latency", {"latency": ["scx_workload"]}),
           derive("fork-churn", "makespan"),
           derive("long-tail-batch", "makespan")]


@pytest.fixture(scope="module")
def one_boot(vm: MicroVM) -> dict[str, Any]:
    """Stages 1-2 in-process, then 3-4 of every example and derived program in one boot."""
    named = [(p.stem, tomllib.loads(p.read_text())) for p in EXAMPLES]
    named += [(d.policy["policy"]["name"], d.policy) for d in DERIVED]
    static = {}
    for name, doc in named:
        assert scx_policy.validate(doc, name) == [], name
        static[name] = scx_policy.static_check(doc)
        assert not [f for f in static[name] if f["severity"] == "error"], (name, static[name])
    start = time.monotonic()
    results = scx_policy.verify_in_one_boot([doc for _, doc in named], 3, vm=vm)
    return {"docs": dict(named), "static": static, "seconds": time.monotonic() - start,
            "results": {name: r for (name, _), r in zip(named, results, strict=True)}}


def _passed_in_guest(name: str, doc: dict[str, Any], result: dict[str, Any]) -> None:
    assert result["kernel"] == [], (name, result["kernel"])
    dynamic = result["dynamic"]
    assert not [f for f in dynamic if f["severity"] == "error"], (name, dynamic)
    codes = {f["code"]: f for f in dynamic}
    assert {"workload", "scx-counters", "scheduler-stats"} <= set(codes), (name, codes)
    stats = codes["scheduler-stats"]["stats"]
    # the compiled scheduler counted what it did: every class has its counters
    for cls in tomllib.loads(doc["scx"]["program"])["class"]:
        assert f"stat_{cls['name']}_dispatched" in stats, (name, stats)
    assert sum(v for k, v in stats.items() if k.endswith("_dispatched")) > 0, stats


def test_every_example_passes_all_four_stages(one_boot: dict[str, Any]) -> None:
    assert len(EXAMPLES) >= 4
    print(f"one boot for {len(one_boot['docs'])} programs: {one_boot['seconds']:.0f} s")
    for path in EXAMPLES:
        _passed_in_guest(path.stem, one_boot["docs"][path.stem],
                         one_boot["results"][path.stem])
    # the cgroup selector read the task's cgroup id: the guest's tasks are in the root (id 1)
    stats = next(f["stats"] for f in one_boot["results"]["scxl-batch"]["dynamic"]
                 if f["code"] == "scheduler-stats")
    assert stats["stat_service_dispatched"] + stats["stat_service_direct"] > 0, stats


def test_derived_programs_pass_all_four_stages(one_boot: dict[str, Any]) -> None:
    for derived in DERIVED:
        name = derived.policy["policy"]["name"]
        _passed_in_guest(name, derived.policy, one_boot["results"][name])
    # the named latency class caught the workload's own processes
    name = DERIVED[0].policy["policy"]["name"]
    stats = next(f["stats"] for f in one_boot["results"][name]["dynamic"]
                 if f["code"] == "scheduler-stats")
    assert stats["stat_named_enqueued"] + stats["stat_named_direct"] > 0, stats


def test_program_policy_gets_a_token_over_dbus(start_daemon, vm: MicroVM) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\ncall_timeout_seconds = 400\n")
    text = (ROOT / "policies" / "t2" / "scxl-latency-hogs.toml").read_text()
    policy_id = call(proc.address, "SubmitPolicy", "s", text)
    _, stages = verify_passes_every_stage(proc.address, policy_id)
    bounds = [f for f in stages["static"]["findings"] if f["code"] == "wait-bound"]
    assert {f["evidence"]["class"] for f in bounds} == {"interactive", "batch"}
    codes = {f["code"] for f in stages["dynamic"]["findings"]}
    assert {"workload", "scx-counters", "scheduler-stats"} <= codes
