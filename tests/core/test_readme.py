"""The README's Quick start and CI: two self-contained commands, CI runs the test one."""

from __future__ import annotations

import re

from tests.harness import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _commands(text: str) -> list[str]:
    """The indented (Markdown code block) lines of ``text``."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_quick_start_has_exactly_two_commands() -> None:
    assert _commands(_section("Quick start")) == ["./scripts/demo", "./scripts/test"]


def test_each_quick_start_command_sets_up_what_it_needs() -> None:
    # Each runs bootstrap first: apt packages, a venv, the project installed into it.
    for script in ("demo", "test"):
        lines = [x for x in (ROOT / "scripts" / script).read_text().splitlines()
                 if x.strip() and not x.startswith("#")]
        boot = next(i for i, x in enumerate(lines) if "scripts/bootstrap" in x)
        venv_use = next(i for i, x in enumerate(lines) if "$venv/bin/python" in x)
        assert boot < venv_use, f"scripts/{script} uses the venv before bootstrapping"
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert "requirements-apt.txt" in bootstrap and "apt-get install" in bootstrap
    assert "-m venv" in bootstrap and "pip\" install" in bootstrap


def test_ci_runs_ruff_mypy_and_exactly_the_test_command() -> None:
    lines = [x.strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()
             if x.strip() and not x.lstrip().startswith("#")]
    # Exactly the README's command, once, and its status is the run's
    # (the checks run beside it: docs/performance.md).
    runs = [x for x in lines if "scripts/test" in x]
    assert runs == ["./scripts/test || test_rc=$?"], runs
    assert lines[-2:] == ['if ((test_rc)); then exit "$test_rc"; fi', 'exit "$checks_rc"']
    assert any("/bin/ruff\" check schedcpd" in x for x in lines)
    assert any("/bin/mypy\" schedcpd" in x for x in lines)
