"""Verifier stages 2-4 for T2 (sched_ext) policies, with the guest kernel's real verifier.

The good policy (policies/t2/scx-vtime.toml) goes through a real daemon (D-Bus VerifyPolicy,
token); the broken schedulers are checked through the scheduler plugin's
stage functions directly (one guest boot each).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from plugins.scheduler import scx_policy, scx_rules
from plugins.scheduler.microvm import MicroVM
from tests.harness import ROOT, call, verify_passes_every_stage

SOURCES = ROOT / "bpf" / "scx"


def t2_doc(source: str, name: str = "t2-test", **params: int) -> dict[str, Any]:
    return {"policy": {"name": name, "description": "test scheduler", "track": "T2"},
            "scx": {"source": source, "params": params}}


def test_good_policy_passes_every_stage_over_dbus(start_daemon, vm: MicroVM) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\ncall_timeout_seconds = 400\n")
    text = (ROOT / "policies" / "t2" / "scx-vtime.toml").read_text()
    policy_id = call(proc.address, "SubmitPolicy", "s", text)
    assert json.loads(call(proc.address, "GetPolicy", "s", policy_id))["track"] == "T2"
    _, stages = verify_passes_every_stage(proc.address, policy_id)
    codes = {f["code"] for f in stages["dynamic"]["findings"]}
    assert {"workload", "scx-counters"} <= codes  # the run happened and was measured


def test_static_rules_reject_a_scheduler_that_loses_tasks() -> None:
    source = (SOURCES / "vtime.bpf.c").read_text().replace(
        "\tscx_bpf_dsq_insert_vtime(p, QUEUE, slice_ns(), vtime, enq_flags);",
        "\tif (p->pid & 1)\n\t\treturn;\n"
        "\tscx_bpf_dsq_insert_vtime(p, QUEUE, slice_ns(), vtime, enq_flags);")
    doc = t2_doc(source)
    assert scx_policy.validate(doc) == []
    findings = scx_policy.static_check(doc)
    assert [f["code"] for f in findings] == ["enqueue-no-dsq"], findings
    line = source.splitlines().index("\t\treturn;") + 1
    assert findings[0]["field"] == f"scx.source:{line}"


def test_static_rules_check_slices_loops_and_includes() -> None:
    source = (SOURCES / "vtime.bpf.c").read_text().replace(
        '#include "scx_common.h"', '#include "scx_common.h"\n#include "/etc/passwd"').replace(
        "scx_bpf_dsq_move_to_local(QUEUE);",
        "while (scx_bpf_dsq_move_to_local(QUEUE))\n\t\t;").replace(
        "scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns(), 0);",
        "scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, SCX_SLICE_INF, 0);")
    codes = sorted(f["code"] for f in scx_policy.static_check(t2_doc(source)))
    assert codes == ["include-not-allowed", "slice-out-of-bounds", "unbounded-loop"]
    doc = tomllib.loads((ROOT / "policies" / "t2" / "scx-vtime.toml").read_text())
    doc["scx"]["params"]["slice_us"] = 500_000
    assert "scx.params.slice_us" in {f["field"] for f in scx_policy.validate(doc)}


def test_never_dispatching_scheduler_is_ejected_in_the_dynamic_stage(vm: MicroVM) -> None:
    doc = t2_doc((SOURCES / "tests" / "never_dispatch.bpf.c").read_text())
    assert scx_policy.validate(doc) == []
    assert scx_policy.static_check(doc) == []  # the bug hides behind a parameter
    findings = scx_policy.dynamic_check(doc, 6, vm=vm)
    errors = {f["code"]: f for f in findings if f["severity"] == "error"}
    assert "ejected" in errors, findings
    assert "runnable task stall" in errors["ejected"]["message"]
    first = next(f for f in findings if f["severity"] == "error")
    assert any("schedcp_never" in line for line in first["dmesg"])


def test_verifier_rejection_log_is_in_the_kernel_stage(vm: MicroVM) -> None:
    doc = t2_doc((SOURCES / "tests" / "rejected.bpf.c").read_text())
    assert scx_policy.static_check(doc) == []
    [finding] = scx_policy.kernel_check(doc, vm=vm)
    assert finding["code"] == "bpf-verifier-rejected", finding
    assert "program rej_enqueue" in finding["message"]
    assert "unbounded memory access" in finding["message"]
    assert "BEGIN PROG LOAD LOG" in finding["log"]


def test_compile_error_is_reported_with_the_compiler_output(vm: MicroVM) -> None:
    doc = t2_doc((SOURCES / "vtime.bpf.c").read_text().replace("u64 floor =", "u64 floor = ="))
    [finding] = scx_policy.kernel_check(doc, vm=vm)
    assert finding["code"] == "compile-failed"
    assert "policy.bpf.c:" in finding["log"] and "error" in finding["log"]


def test_sources_are_found(vm: MicroVM) -> None:
    assert Path(vm.source, "scx_common.h").is_file()


def test_both_builtin_schedulers_pass_the_static_rules() -> None:
    # latency.bpf.c loops `for (cpu = 0; cpu < MAX_CPUS && cpu < nr; cpu++)`: a
    # conjunct with a constant bounds the loop; a disjunction does not.
    for name in scx_policy.BUILTINS:
        assert scx_rules.check((SOURCES / f"{name}.bpf.c").read_text()) == [], name
    loop = "for (i = 0; i < n {op} i < 8; i++)"
    assert [f["code"] for f in scx_rules._loop_findings(loop.format(op="&&"))] == []
    assert [f["code"] for f in scx_rules._loop_findings(loop.format(op="||"))] == \
        ["unbounded-loop"]
