"""The layering contract: the engine imports no D-Bus library and no plugin;
plugins import only schedcpd.plugin_api (docs/plugins.md, "Layering").

``lint-imports`` checks the contracts of ``[tool.importlinter]`` in
pyproject.toml; this test runs it (so ./scripts/test enforces it as well as
.ci/run) and checks that every engine module is under the contract, so a new
module cannot slip past it.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.harness import ROOT

# schedcpd's D-Bus front end and command-line tools: everything else is the engine.
FRONT_END = {"schedcpd.__main__", "schedcpd.cli", "schedcpd.cli_deploy", "schedcpd.cli_explain",
             "schedcpd.cli_fleet", "schedcpd.cli_observe", "schedcpd.cli_output", "schedcpd.daemon",
             "schedcpd.dbus"}


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _top_level_modules(package: Path) -> set[str]:
    out = set()
    for child in package.iterdir():
        if child.suffix == ".py" and child.name != "__init__.py":
            out.add(f"{package.name}.{child.stem}")
        elif child.is_dir() and (child / "__init__.py").exists():
            out.add(f"{package.name}.{child.name}")
    return out


def test_lint_imports_keeps_every_contract() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout, result.stdout[-2000:]


def test_every_engine_module_is_under_the_contract() -> None:
    engine = _contracts()["engine"]
    modules = _top_level_modules(ROOT / "schedcpd")
    assert FRONT_END <= modules, FRONT_END - modules
    assert set(engine["source_modules"]) == modules - FRONT_END
    assert {"dbus_fast", "plugins"} | FRONT_END <= set(engine["forbidden_modules"])


def test_plugins_may_import_only_the_plugin_api() -> None:
    contract = _contracts()["plugin-api"]
    assert contract["source_modules"] == ["plugins"]
    assert contract["forbidden_modules"] == ["schedcpd"]
    assert contract["ignore_imports"] == ["plugins.** -> schedcpd.plugin_api"]
