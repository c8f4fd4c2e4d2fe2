"""The plugin host: isolation of failing plugins, the agent marker, docs of every hook."""

from __future__ import annotations

import inspect
import json
import os
import re
import textwrap
import urllib.request
from pathlib import Path

import pytest

from schedcpd import agent_hookspecs, hookspecs
from schedcpd.errors import NotSupported
from schedcpd.hookspecs import PluginContext
from schedcpd.plugins import PluginHost
from tests.core.sample_plugins import good
from tests.harness import ROOT, calls_as

SAMPLES = "tests.core.sample_plugins"


def host(*names: str, failures: list | None = None) -> PluginHost:
    return PluginHost(
        builtins={n: f"{SAMPLES}.{n}" for n in names},
        on_failure=(lambda n, m: failures.append((n, m))) if failures is not None else None,
        load_entry_points=False,
    )


def test_good_plugin_is_described_and_started(tmp_path: Path) -> None:
    h = host("good")
    h.startup(lambda name: PluginContext(state_dir=tmp_path / name))
    assert good.STARTED[-1].state_dir == tmp_path / "good"
    assert h.subsystems()["good"]["capabilities"]["knob"]["available"] is True
    assert h.call_first("schedcp_state", subsystem="good") == {"managed": []}
    assert h.call_first("schedcp_state", subsystem="other") is None


def test_failing_plugins_are_disabled_and_reported() -> None:
    failures: list[tuple[str, str]] = []
    h = host("broken_import", "raises_in_hook", "good", failures=failures)
    assert not h.records["broken_import"].enabled
    assert "cannot be imported" in (h.records["broken_import"].error or "")
    # The raising plugin is disabled on its first failing hook; others still answer.
    subsystems = h.subsystems()
    assert set(subsystems) == {"good"}
    record = h.records["raises_in_hook"]
    assert not record.enabled and "describe exploded" in (record.error or "")
    assert [n for n, _ in failures] == ["broken_import", "raises_in_hook"]
    assert not h.pm.has_plugin("raises_in_hook")


def test_a_named_error_from_a_hook_is_an_answer_not_a_fault() -> None:
    failures: list[tuple[str, str]] = []
    h = host("good", failures=failures)
    with pytest.raises(NotSupported, match="no knob to observe"):
        h.call_first("schedcp_observe", subsystem="good")
    assert h.records["good"].enabled and not failures
    assert set(h.subsystems()) == {"good"}


def test_agent_hooks_cannot_bind_to_daemon_hooks() -> None:
    h = host("agent_sneak", "good")
    assert not h.records["agent_sneak"].enabled
    assert "no schedcp daemon hook" in (h.records["agent_sneak"].error or "")
    assert set(h.subsystems()) == {"good"}


def test_hook_without_spec_is_refused() -> None:
    h = host("typo")
    assert not h.records["typo"].enabled
    assert "schedcp_describ" in (h.records["typo"].error or "")


def test_disabled_by_config() -> None:
    h = PluginHost(builtins={"good": f"{SAMPLES}.good"}, disabled=["good"],
                   load_entry_points=False)
    assert h.records["good"].error == "disabled in config"
    assert h.subsystems() == {}


def _hooks(module: object, project: str) -> list:
    """The hook specifications ``module`` declares for the pluggy ``project``."""
    hooks = [f for n, f in inspect.getmembers(module, inspect.isfunction)
             if hasattr(f, f"{project}_spec")]
    assert hooks
    return hooks


def test_every_hook_is_typed_and_has_a_docstring() -> None:
    for module, project in ((hookspecs, "schedcp"), (agent_hookspecs, "schedcp_agent")):
        for fn in _hooks(module, project):
            assert inspect.getdoc(fn), f"{fn.__name__} has no docstring"
            sig = inspect.signature(fn)
            assert sig.return_annotation is not inspect.Signature.empty, fn.__name__
            for param in sig.parameters.values():
                assert param.annotation is not inspect.Parameter.empty, \
                    f"{fn.__name__}: parameter {param.name} has no type"


def test_every_hook_is_documented() -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    for module, project in ((hookspecs, "schedcp"), (agent_hookspecs, "schedcp_agent")):
        for fn in _hooks(module, project):
            name = fn.__name__
            header = re.search(rf"^###\s+`?{name}\(", doc, re.M)
            assert header, f"{name} is not in docs/plugins.md"
            section = doc[header.end():].split("\n### ", 1)[0]
            for param in inspect.signature(fn).parameters:
                assert f"`{param}`" in section, f"{name}: parameter {param} undocumented"


def test_agent_hooks_use_a_separate_marker() -> None:
    daemon = {f.__name__ for f in _hooks(hookspecs, "schedcp")}
    agent = {f.__name__ for f in _hooks(agent_hookspecs, "schedcp_agent")}
    assert not daemon & agent
    assert agent_hookspecs.hookimpl.project_name != hookspecs.hookimpl.project_name
    # No agent hook carries the daemon's marker.
    assert not any(hasattr(f, "schedcp_spec") for f in _hooks(agent_hookspecs, "schedcp_agent"))


def test_third_party_plugins_from_entry_points_failing_keep_daemon_up(
        readable_path: Path, start_daemon, test_users: dict[str, int]) -> None:
    # A real installed distribution with two schedcp.plugins entry points: one
    # raises in schedcp_startup, one cannot even be imported.  The daemon
    # starts, serves, and reports both in status, log and metrics.  They run
    # out of process as nobody, so the site is one nobody can read.
    site = readable_path
    (site / "bad_plugin").mkdir(parents=True)
    (site / "bad_plugin" / "__init__.py").write_text(textwrap.dedent("""
        from schedcpd.hookspecs import hookimpl

        @hookimpl
        def schedcp_startup(context):
            raise OSError("no such device")
    """))
    (site / "unimportable_plugin.py").write_text("raise ImportError('missing libfoo')\n")
    dist = site / "bad_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[schedcp.plugins]\nbad = bad_plugin\nunimportable = unimportable_plugin\n")
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = start_daemon("[metrics]\nport = 0\n", env=env)
    status = json.loads(calls_as(test_users["nobody"], proc.address,
                                 [["GetStatus", "", []]])[0]["ok"])
    plugins = {p["name"]: p for p in status["plugins"]}
    assert plugins["bad"]["enabled"] is False
    assert "no such device" in plugins["bad"]["error"]
    assert "out of process, as nobody" in plugins["bad"]["origin"]
    assert plugins["unimportable"]["enabled"] is False
    assert "missing libfoo" in plugins["unimportable"]["error"]
    assert plugins["scheduler"]["enabled"] is True  # the others keep running
    assert "plugin bad disabled" in proc.log_text()
    assert "plugin unimportable disabled" in proc.log_text()
    url = f"http://127.0.0.1:{status['metrics']['port']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'schedcp_plugin_failures_total{plugin="bad"} 1.0' in text
    assert 'schedcp_plugin_failures_total{plugin="unimportable"} 1.0' in text
    enabled = sum(p["enabled"] for p in plugins.values())
    assert f"schedcp_plugins_enabled {enabled:.1f}" in text
    assert proc.proc.poll() is None


def test_a_routed_hook_asks_only_the_owner_of_the_subsystem() -> None:
    from tests.core.sample_plugins import nosy

    failures: list[tuple[str, str]] = []
    h = host("nosy", "good", failures=failures)
    nosy.ASKED.clear()
    # pluggy dispatches to the plugin that describes "good" alone: nosy's
    # broken hook is not run, and it stays enabled.
    assert h.call_first("schedcp_state", subsystem="good") == {"managed": []}
    assert nosy.ASKED == [] and h.records["nosy"].enabled and not failures
    assert h.owner("good") == "good" and h.owner("nosy") == "nosy"
    # Asked for its own subsystem it fails, and only it is disabled.
    assert h.call_first("schedcp_state", subsystem="nosy") is None
    assert nosy.ASKED == ["nosy"]
    assert [n for n, _ in failures] == ["nosy"] and "state exploded" in failures[0][1]
    assert h.owner("nosy") is None and set(h.subsystems()) == {"good"}
    # A subsystem nobody describes is asked of every enabled plugin.
    assert h.call_first("schedcp_state", subsystem="unknown") is None
