"""Property tests on policy documents: random TOML never crashes; rejections name a field.

Documents are drawn from a strategy that knows the policy schema's keys and
plausible values but mixes in unknown keys, wrong types and out-of-range
numbers, then written as TOML (tomli-w).  They go through the real
repository (real scheduler plugin validation, real SQLite) and, in a smaller
batch, through a running schedcpd over D-Bus.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.scheduler import policy as t1
from plugins.scheduler import sysctl
from schedcpd.errors import InvalidArgument
from schedcpd.plugins import PluginHost
from schedcpd.repository import Repository
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from tests.harness import STATE_ROOT, calls_as

# "source: field: reason", the field a dotted path like group[1].task.nice whose
# parts are bare keys or quoted strings (a key with spaces, dots or non-ASCII).
_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")(?:\[\d+\])*'
FIELD = re.compile(rf"{_PART}(?:\.{_PART})*: \S")

_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-30, 300_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["idle", "batch", "fifo", "other", "0-1", "/user.slice", "x264", "T1", "T2",
                     "scheduler", "wait_per_run_us", "cpu_share", ".*", "/../etc"]),
)
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)


def _mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` about 9 times in 10, else ``rare``."""
    # (0, hypothesis's favourite, picks ``usual``.)
    return st.integers(0, 9).flatmap(lambda n: rare if n == 9 else usual)


def _table(keys: set[str] | list[str], values: st.SearchStrategy[Any] = _ANY,
           max_size: int = 4) -> st.SearchStrategy[dict[str, Any]]:
    """A table with mostly schema keys, sometimes an unknown one."""
    key = st.one_of(st.sampled_from(sorted(keys)), st.text(min_size=1, max_size=8))
    return st.dictionaries(key, values, max_size=max_size)


_VALID_TASK = st.fixed_dictionaries({}, optional={
    "policy": st.sampled_from(["other", "batch", "idle"]), "nice": st.integers(-20, 19),
    "slice_us": st.integers(100, 100_000), "timer_slack_ns": st.integers(1, 10**8)})
_VALID_CGROUP = st.fixed_dictionaries({}, optional={
    "shares": st.integers(2, 262_144), "quota_us": st.integers(1000, 10**7),
    "period_us": st.integers(1000, 10**6), "cpus": st.sampled_from(["0", "0-1", "1"])})
_GROUP = st.fixed_dictionaries(
    {"name": _mostly(st.sampled_from(["web", "db", "batch"]), _SCALARS),
     "match": _mostly(st.fixed_dictionaries({"comm": st.lists(
         st.sampled_from(["x264", "schedcp-none"]), min_size=1, max_size=2)}),
         _table(t1.MATCH_KEYS)),
     "task": _mostly(_VALID_TASK, _table(t1.TASK_KEYS, st.one_of(_SCALARS,
                                                                 st.integers(-25, 120))))},
    optional={
        "cgroup": _mostly(_VALID_CGROUP, _table(t1.CGROUP_KEYS)),
        "depends_on": st.one_of(st.lists(st.sampled_from(["web", "db", "batch", "x"]),
                                         max_size=2), _ANY),
        "descendants": _ANY,
    },
)
_DOCUMENTS = st.fixed_dictionaries(
    {
        # Mostly valid metadata, so that the groups and knobs get explored too.
        "policy": _mostly(
            st.fixed_dictionaries(
                {"name": _mostly(st.just("prop-test"), _SCALARS),
                 "description": _mostly(st.just("a property test"), _SCALARS)},
                optional={"track": _mostly(st.just("T1"), st.sampled_from(["T2", "T9", 1])),
                          "subsystem": _mostly(st.just("scheduler"), _SCALARS),
                          "workloads": _mostly(st.lists(st.text(max_size=9), max_size=2), _ANY),
                          "tags": _mostly(st.lists(st.text(max_size=9), max_size=2), _ANY),
                          "version": _ANY}),
            _ANY),
        "group": _mostly(st.lists(_GROUP, min_size=1, max_size=3), _ANY),
    },
    optional={
        "sysctl": _table(set(sysctl.SYSCTL_RANGES), st.integers(-10, 10_000_000)),
        "safety": _table(t1.SAFETY_KEYS),
        "parameters": st.dictionaries(st.text(min_size=1, max_size=6),
                                      _table(t1.PARAM_KEYS), max_size=2),
        "guard": st.one_of(st.lists(_table(t1.GUARD_KEYS), max_size=2), _ANY),
    },
)
_SCX = st.fixed_dictionaries({}, optional={
    "scheduler": st.one_of(st.sampled_from(["vtime", "latency", "nope"]), st.text(max_size=8),
                           _ANY),
    "source": _ANY, "params": _ANY, "other": _ANY})
# Now and then an [scx] table (T2) or a top-level key the schema does not know.
DOCUMENTS = st.tuples(_DOCUMENTS, _mostly(st.just({}), st.one_of(
    st.fixed_dictionaries({"scx": _SCX}),
    st.dictionaries(st.text(min_size=1, max_size=8), _ANY, min_size=1, max_size=1)))).map(
    lambda pair: {**pair[1], **pair[0]})


def _text(doc: dict[str, Any]) -> str:
    return tomli_w.dumps(doc)


def assert_names_fields(message: str, source: str) -> None:
    """Every error in ``message`` is ``source: field: reason``."""
    parts = message.split(f"{source}: ")
    assert parts[0] == "" and len(parts) > 1, message
    for part in parts[1:]:
        assert FIELD.match(part), f"no field named in {part!r} (of {message!r})"


_HOST = PluginHost(load_entry_points=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_random_documents_are_stored_or_rejected_by_field(doc: dict[str, Any]) -> None:
    text = _text(doc)
    with tempfile.TemporaryDirectory(dir=STATE_ROOT) as d:  # tmpfs: 300 databases
        store = StateStore(Path(d) / "db.sqlite", MIGRATIONS)
        repo = Repository(store, lambda s, p: _HOST.call_first(
            "schedcp_validate", subsystem=s, policy=p), "scheduler")
        try:
            pid = asyncio.run(repo.add(text, "user", "uid 0", 0))
        except InvalidArgument as err:
            assert_names_fields(str(err), "uid 0")
        else:
            assert asyncio.run(repo.get(pid))["document"] == text
            # Stage 2 reads every stored document too; it must judge, never raise.
            findings = _HOST.call_first("schedcp_static_check", subsystem="scheduler",
                                        policy=doc, active=[{"name": "x", "document": text}])
            assert all(f["code"] and f["message"] for f in findings)
        finally:
            store.close()
    assert _HOST.records["scheduler"].enabled  # the plugin never raised


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(DOCUMENTS, min_size=25, max_size=25))
def test_random_documents_never_crash_the_daemon(daemon, docs: list[dict[str, Any]]) -> None:
    calls = [["SubmitPolicy", "s", [_text(d)]] for d in docs] + [["GetStatus", "", []]]
    results = calls_as(0, daemon.address, calls)
    for result in results[:-1]:
        if "error" in result:
            assert result["error"] == "org.schedcp.Control1.Error.InvalidArgument", result
            assert_names_fields(result["message"], "uid 0")
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", result["ok"])
    assert json.loads(results[-1]["ok"])["pid"] == daemon.proc.pid


@pytest.mark.parametrize("value", [[], {}, 3])
def test_t2_scheduler_of_another_type_is_rejected_by_field(value: Any) -> None:
    doc = {"policy": {"name": "t2", "description": "d", "track": "T2"},
           "scx": {"scheduler": value}}
    host = PluginHost(load_entry_points=False)  # not _HOST: this one may get disabled
    findings = host.call_first("schedcp_validate", subsystem="scheduler", policy=doc)
    assert host.records["scheduler"].enabled
    assert findings and findings[0]["field"] == "scx.scheduler"


def test_t2_parameter_of_another_type_is_rejected_by_field() -> None:
    doc = {"policy": {"name": "t2", "description": "d", "track": "T2"},
           "scx": {"scheduler": "vtime", "params": {"slice_us": "fast"}},
           "parameters": {"slice_us": {"field": "scx.params.slice_us", "min": 500, "max": 9000}}}
    host = PluginHost(load_entry_points=False)
    findings = host.call_first("schedcp_validate", subsystem="scheduler", policy=doc)
    assert host.records["scheduler"].enabled
    assert [f["field"] for f in findings] == ["scx.params.slice_us"]
