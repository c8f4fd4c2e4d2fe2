"""Multi-subsystem documents: the frame the engine checks, each part checked by its plugin.

The REAL scheduler and io plugins validate the parts; nothing is applied.
"""

from __future__ import annotations

import tomllib

import pytest

from schedcpd.errors import InvalidArgument
from schedcpd.plugins import PluginHost
from schedcpd.policy_parts import active_for, split
from schedcpd.repository import Repository, parse_document, policy_scope
from tests.harness import ROOT

DATABASE = ROOT / "policies" / "database.toml"
SCHED = '[[scheduler.group]]\nname = "db"\nmatch = { pid = [1] }\ntask = { nice = -2 }\n'
IO = '[[io.group]]\nname = "db"\nmatch = { pids = [1] }\nioprio = { class = "be", level = 0 }\n'


def head(subsystems: str = '["scheduler", "io"]', extra: str = "") -> str:
    return (f'[policy]\nname = "multi"\ndescription = "a multi-subsystem test policy"\n'
            f'subsystems = {subsystems}\n{extra}\n')


@pytest.fixture(scope="module")
def plugins() -> PluginHost:
    host = PluginHost(load_entry_points=False)
    assert {"scheduler", "io"} <= set(host.subsystems()), host.status()
    return host


@pytest.fixture
def repo(plugins: PluginHost) -> Repository:
    # check() stores nothing: no state store needed.
    return Repository(None, lambda s, d: plugins.call_first(  # type: ignore[arg-type]
        "schedcp_validate", subsystem=s, policy=d), "scheduler")


def test_a_multi_subsystem_document_is_stored_under_its_parts(repo: Repository) -> None:
    doc, meta = repo.check(head() + SCHED + IO, "t.toml")
    assert meta["subsystem"] == "scheduler+io"
    assert policy_scope(doc) == {"subsystems": ["scheduler", "io"],
                                 "groups": ["scheduler/db", "io/db"]}
    parts = split(doc, meta["subsystem"])
    assert [p.subsystem for p in parts] == ["scheduler", "io"]
    # Each part is a whole document of its subsystem, with the policy's metadata.
    assert parts[1].doc["policy"] == {"name": "multi", "subsystem": "io",
                                      "description": "a multi-subsystem test policy"}
    assert parts[1].doc["group"][0]["ioprio"] == {"class": "be", "level": 0}


def test_the_order_of_subsystems_is_the_order_of_the_parts(repo: Repository) -> None:
    doc, meta = repo.check(head('["io", "scheduler"]') + SCHED + IO, "t.toml")
    assert meta["subsystem"] == "io+scheduler"
    assert [p.subsystem for p in split(doc, meta["subsystem"])] == ["io", "scheduler"]


def test_a_single_subsystem_document_is_unchanged(repo: Repository) -> None:
    text = ('[policy]\nname = "one"\ndescription = "one part"\n'
            '[[group]]\nname = "db"\nmatch = { pid = [1] }\ntask = { nice = 1 }\n')
    doc, meta = repo.check(text, "t.toml")
    assert meta["subsystem"] == "scheduler"
    assert policy_scope(doc) == {"groups": ["db"]}
    [part] = split(doc, "scheduler")
    assert part.doc is doc and part.group("db") == "db"


@pytest.mark.parametrize(("text", "error"), [
    (head(extra='subsystem = "io"') + SCHED + IO, "policy.subsystems: give either"),
    (head('[]') + SCHED, "policy.subsystems: a non-empty list"),
    (head('"scheduler"') + SCHED, "policy.subsystems: a non-empty list"),
    (head('["io", "io"]') + IO, "a subsystem is named twice"),
    (head() + SCHED, "io: policy.subsystems names 'io', so a [io] table"),
    (head() + SCHED + IO + '[[group]]\nname = "x"\n', "group: unknown table"),
    (head(extra='track = "T2"') + SCHED + IO, "policy.track: a multi-subsystem policy is T1"),
    (head('["scheduler", "nosuch"]') + SCHED + "[nosuch]\nx = 1\n",
     "policy.subsystems: no enabled subsystem 'nosuch'"),
    (head('["scheduler", "a+b"]') + SCHED + '["a+b"]\nx = 1\n', "is not a subsystem name"),
])
def test_a_malformed_frame_is_a_named_error(repo: Repository, text: str, error: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^t\.toml: ") as raised:
        repo.check(text, "t.toml")
    assert error in str(raised.value), raised.value


def test_each_part_is_checked_by_its_plugin_and_findings_name_the_part(
        repo: Repository) -> None:
    bad = (head() + SCHED.replace("nice = -2", "nice = 40")
           + IO.replace("level = 0", "level = 9") + 'throttle = [{ device = "" }]\n')
    with pytest.raises(InvalidArgument) as raised:
        repo.check(bad, "t.toml")
    text = str(raised.value)
    assert "t.toml: scheduler.group[0].task.nice: " in text, text
    assert "t.toml: io.group[0].ioprio.level: 9: must be an integer in [0, 7]" in text, text
    # A key of one subsystem in the other's part is that plugin's unknown key.
    with pytest.raises(InvalidArgument, match=r"io\.group\[0\]\.task: unknown group setting"):
        repo.check(head() + SCHED + IO + "task = { nice = 1 }\n", "t.toml")


def test_the_builtin_database_policy_is_valid_and_passes_each_part_s_static_check(
        repo: Repository, plugins: PluginHost) -> None:
    doc, meta = repo.check(DATABASE.read_text(), str(DATABASE))
    assert meta["subsystem"] == "scheduler+io"
    for part in split(doc, meta["subsystem"]):
        assert plugins.call_first("schedcp_static_check", subsystem=part.subsystem,
                                  policy=part.doc, active=[]) == [], part.subsystem


def test_a_live_multi_policy_is_shown_to_each_plugin_as_its_part() -> None:
    text = DATABASE.read_text()
    live = [{"policy_id": "p1", "name": "database", "subsystem": "scheduler+io",
             "document": text, "deployment_id": "dep-1"},
            {"policy_id": "p2", "name": "other", "subsystem": "scheduler",
             "document": "[policy]\n", "deployment_id": "dep-2"}]
    parse = lambda t: parse_document(t, "live")  # noqa: E731
    io = active_for("io", live, parse)  # type: ignore[arg-type]
    assert [(a["policy_id"], a["subsystem"]) for a in io] == [("p1", "io")]
    assert tomllib.loads(io[0]["document"])["group"][0]["ioprio"] == {"class": "be",
                                                                      "level": 0}
    sched = active_for("scheduler", live, parse)  # type: ignore[arg-type]
    assert [a["policy_id"] for a in sched] == ["p1", "p2"]
    part = tomllib.loads(sched[0]["document"])
    assert part["policy"]["subsystem"] == "scheduler" and "task" in part["group"][0]
    assert "ioprio" not in part["group"][0] and sched[1]["document"] == "[policy]\n"
