"""The scheduler language: schema stage, identifier rules, compiler, wait bounds (no VM).

Hostile programs are refused at the earliest stage that can see the problem,
with a finding that names the construct and the line of the program.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler import scx_policy, scx_rules, scxlang
from plugins.scheduler.scxlang import bounds, schema
from plugins.scheduler.scxlang.lines import LineMap
from tests.harness import ROOT

EXAMPLES = sorted((ROOT / "policies" / "t2").glob("scxl-*.toml"))

BASE = '''\
[scheduler]
name = "two"
order = ["fast", "rest"]

[params.fast_slice_us]
default = 1000
min = 200
max = 5000

[[class]]
name = "fast"
match = { wake_interval_us_max = 50000, avg_run_us_max = 500 }
order = "fifo"
slice_us = "fast_slice_us"
preempt = ["rest"]
guard = { max_wait_us = 20000 }

[[class]]
name = "rest"
order = "vtime"
slice_us = 5000
guard = { min_share_pct = 20 }
'''


def line_of(text: str, needle: str, nth: int = 0) -> int:
    lines = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    return lines[nth]


def errors(text: str) -> list[dict[str, Any]]:
    return [f for f in schema.check(text, "t.toml").findings if f["severity"] == "error"]


def policy(program: str, **params: int) -> dict[str, Any]:
    return {"policy": {"name": "scxl-test", "description": "test", "track": "T2"},
            "scx": {"program": program, "params": params}}


def test_examples_exist_one_per_workload_type() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"scxl-latency-hogs", "scxl-batch", "scxl-build", "scxl-long-tail"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_schema_and_static_stage(path: Path) -> None:
    doc = tomllib.loads(path.read_text())
    assert scx_policy.validate(doc, path.name) == []
    findings = scx_policy.static_check(doc)
    assert [f for f in findings if f["severity"] == "error"] == []
    program = tomllib.loads(doc["scx"]["program"])
    bound = {f["evidence"]["class"]: f for f in findings if f["code"] == "wait-bound"}
    assert set(bound) == {c["name"] for c in program["class"]}  # every class has a bound
    for finding in bound.values():
        assert 0 < finding["evidence"]["bound_ms"] <= bounds.WAIT_LIMIT_MS
        assert finding["field"].startswith("scx.program:")
    source, kind = scx_policy.source_of(doc)
    assert kind == "program" and scx_rules.check(source) == []
    assert scx_rules.ops_name(source) == f"scxl_{program['scheduler']['name']}"
    assert set(scx_rules.rodata_params(source)) == set(program.get("params", {}))


def test_compiled_c_has_what_the_program_says() -> None:
    source = scxlang.compile_text(BASE).source
    assert '#include "scx_common.h"' in source
    assert source.count('#include') == 1
    assert "const volatile u64 fast_slice_us = 1000;" in source
    assert "u64 stat_fast_enqueued" in source and "stat_rest_guard" in source
    assert "scx_bpf_dsq_insert(p, SCXL_DSQ_0" in source          # fast: fifo
    assert "scx_bpf_dsq_insert_vtime(p, SCXL_DSQ_1" in source    # rest: vtime
    assert "scxl_preempt_0(now)" in source and "scxl_preempt_1" not in source
    assert "(scxl.skipped[1] + 1) * 20ULL >= 100" in source      # the share guard
    # keys stay near the clock: clamped weights, at most 8 slices of vtime debt
    assert "w < SCXL_WEIGHT_MIN ? SCXL_WEIGHT_MIN" in source
    assert "key = scxl.vtime_now + SCXL_VTIME_AHEAD_SLICES * slice;" in source
    dispatch = source[source.index("SCHEDCP_OP(scxl_dispatch"):]
    assert dispatch.index("scxl_take_0(cpu, now, false)") < \
        dispatch.index("scxl_take_1(cpu, now, false)")           # the dispatch order


def test_comm_selectors_are_exact_prefix_and_suffix_matches() -> None:
    text = BASE.replace("match = { wake_interval_us_max = 50000, avg_run_us_max = 500 }",
                        'match = { comm = ["ab"], comm_prefix = ["x"], comm_suffix = ["yz"] }')
    source = scxlang.compile_text(text).source
    assert "(p->comm[0] == 97 && p->comm[1] == 98 && p->comm[2] == 0)" in source
    assert "(p->comm[0] == 120)" in source
    assert "(p->comm[15] == 0 && p->comm[13] == 121 && p->comm[14] == 122)" in source


def test_line_map_follows_tables_arrays_and_inline_tables() -> None:
    lines = LineMap(BASE)
    assert lines.line(("scheduler", "order", 1)) == 3
    assert lines.line(("params", "fast_slice_us", "max")) == 8
    assert lines.line(("class", 1, "slice_us")) == line_of(BASE, "slice_us = 5000")
    assert lines.line(("class", 0, "guard", "max_wait_us")) == line_of(BASE, "max_wait_us")


# -- hostile programs ------------------------------------------------------------------

def test_class_without_a_starvation_guard_is_refused_at_its_line() -> None:
    text = BASE.replace("guard = { min_share_pct = 20 }\n", "")
    [err] = errors(text)
    assert err["code"] == "schema" and "'guard' is a required property" in err["message"]
    assert err["line"] == line_of(text, "[[class]]", 1)
    assert err["construct"] == "class 'rest'"
    assert err["field"] == f"scx.program:{err['line']}"


def test_zero_slice_is_refused_at_its_line() -> None:
    text = BASE.replace("slice_us = 5000", "slice_us = 0")
    [err] = errors(text)
    assert err["line"] == line_of(text, "slice_us = 0")
    assert "class 'rest' slice_us" in err["message"]


def test_inverted_parameter_range_is_refused() -> None:
    text = BASE.replace("min = 200\nmax = 5000", "min = 5000\nmax = 200")
    [err] = errors(text)
    assert err["code"] == "range-inverted" and err["line"] == line_of(text, "min = 5000")
    assert "parameter 'fast_slice_us'" in err["message"]


def test_parameter_range_must_fit_the_construct() -> None:
    text = BASE.replace("min = 200", "min = 0")  # a slice parameter that may be 0
    [err] = errors(text)
    assert err["code"] == "parameter-range"
    assert err["line"] == line_of(text, 'slice_us = "fast_slice_us"')


@pytest.mark.parametrize(("old", "new", "why"), [
    ('[params.fast_slice_us]', '[params.jiffies]', "kernel symbol"),
    ('[params.fast_slice_us]', '[params.u64]', "kernel symbol"),
    ('[params.fast_slice_us]', '[params.current]', "kernel symbol"),
    ('[params.fast_slice_us]', '[params.bpf_slice]', "reserved prefix"),
    ('name = "fast"', 'name = "int"', "C keyword"),
    ('name = "two"', 'name = "while"', "C keyword"),
])
def test_names_that_collide_are_refused(old: str, new: str, why: str) -> None:
    text = BASE.replace(old, new)
    if new.startswith("[params."):
        text = text.replace('slice_us = "fast_slice_us"', f'slice_us = "{new[8:-1]}"')
    if new == 'name = "int"':
        text = text.replace('"fast"', '"int"')
    found = [e for e in errors(text) if e["code"] == "bad-identifier"]
    assert found and why in found[0]["message"], errors(text)
    assert found[0]["line"] == line_of(text, new)


def test_class_not_in_the_dispatch_order_is_refused() -> None:
    text = BASE.replace('order = ["fast", "rest"]', 'order = ["fast"]')
    [err] = errors(text)
    assert err["code"] == "class-never-dispatched"
    assert err["line"] == line_of(text, 'name = "rest"')


def test_too_many_classes_are_refused() -> None:
    extra = "".join(f'[[class]]\nname = "c{i}"\nmatch = {{ uid = [{i}] }}\norder = "fifo"\n'
                    f'slice_us = 1000\nguard = {{ max_wait_us = 1000 }}\n\n' for i in range(8))
    text = BASE.replace("[[class]]\nname = \"fast\"", extra + "[[class]]\nname = \"fast\"", 1)
    found = errors(text)
    assert any("too many classes" in e["message"] for e in found), found
    assert found[0]["line"] == line_of(text, "[[class]]")


def test_catch_all_must_be_last() -> None:
    text = BASE.replace("match = { wake_interval_us_max = 50000, avg_run_us_max = 500 }\n", "")
    codes = {e["code"]: e for e in errors(text)}
    assert "unreachable-class" in codes and codes["unreachable-class"]["line"] == \
        line_of(text, 'name = "fast"')


def test_unknown_parameter_and_unknown_key_are_refused() -> None:
    text = BASE.replace('slice_us = "fast_slice_us"', 'slice_us = "nope"')
    [err] = errors(text)
    assert err["code"] == "unknown-parameter" and "'nope'" in err["message"]
    text = BASE.replace('order = "vtime"', 'order = "vtime"\nnice = -20')
    [err] = errors(text)
    assert err["code"] == "schema" and err["line"] == line_of(text, "nice = -20")
    assert "allowed:" in err["message"]


def test_not_toml_names_the_line() -> None:
    text = BASE.replace('order = "vtime"', 'order = vtime')
    [err] = errors(text)
    assert err["code"] == "program-not-toml" and err["line"] == line_of(text, "order = vtime")


def test_starving_guard_is_refused_in_the_static_stage() -> None:
    # A 1% share behind a class with a 100 ms slice: 99 dispatches of up to 100 ms.
    text = BASE.replace("slice_us = 5000", "slice_us = 100000").replace(
        "min_share_pct = 20", "min_share_pct = 1")
    assert errors(text) == []
    doc = policy(text)
    assert scx_policy.validate(doc) == []
    [err] = [f for f in scx_policy.static_check(doc) if f["severity"] == "error"]
    assert err["code"] == "wait-too-long"
    assert err["line"] == line_of(text, "min_share_pct = 1")
    assert err["evidence"]["bound_ms"] > bounds.WAIT_LIMIT_MS


def test_guards_ahead_that_take_every_dispatch_make_the_wait_unbounded() -> None:
    # "fast" is due after every dispatch elsewhere: it could take them all.
    text = BASE.replace("max_wait_us = 20000", "min_share_pct = 100")
    found = [f for f in scx_policy.static_check(policy(text)) if f["severity"] == "error"]
    assert [f["code"] for f in found] == ["wait-unbounded"]
    assert "could take every dispatch" in found[0]["message"]


def test_policy_params_must_stay_in_the_program_ranges() -> None:
    findings = scx_policy.validate(policy(BASE, fast_slice_us=9000))
    assert [f["field"] for f in findings] == ["scx.params.fast_slice_us"]
    findings = scx_policy.validate(policy(BASE, other=1))
    assert [f["code"] for f in findings] == ["unknown-key"]
    assert scx_policy.params_allowed(policy(BASE)) == {"fast_slice_us": (200, 5000)}


def test_exactly_one_kind_of_scheduler() -> None:
    doc = policy(BASE)
    doc["scx"]["scheduler"] = "vtime"
    assert [f["code"] for f in scx_policy.validate(doc)] == ["missing"]


def test_docs_publish_the_schema_verbatim() -> None:
    doc = (ROOT / "docs" / "scheduler-language.md").read_text()
    block = doc.split("## The grammar (schema.json)", 1)[1].split("```json\n", 1)[1]
    assert block.split("```", 1)[0] == schema.SCHEMA_PATH.read_text()
