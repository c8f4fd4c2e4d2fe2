"""schedcpd.toml: validation, unknown keys, the shipped file documents every key."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest

from schedcpd import config
from schedcpd.errors import ConfigError
from tests.harness import ROOT

SHIPPED = ROOT / "etc" / "schedcpd.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedcpd.toml"
    path.write_text(text)
    return path


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    cfg = config.load(tmp_path / "absent.toml")
    assert cfg["metrics"] == {"enabled": True, "address": "127.0.0.1", "port": 9638}
    assert cfg["authorization"]["group"] == "schedcp"
    assert cfg["authorization"]["group_actions"] == ["org.schedcp.observe", "org.schedcp.submit"]
    assert cfg["authorization"]["everyone_actions"] == ["org.schedcp.observe"]


def test_unknown_keys_warn_not_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "[bus]\nmax_inflight_total = 10\nfrobnicate = 1\n[nosuch]\nx = 1\n")
    with caplog.at_level(logging.WARNING):
        cfg = config.load(path)
    assert cfg["bus"]["max_inflight_total"] == 10
    assert "unknown key bus.frobnicate" in caplog.text
    assert "unknown section [nosuch]" in caplog.text
    assert str(path) in caplog.text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[metrics]\nport = 70000\n", "metrics.port = 70000 must be a TCP port"),
        ("[metrics]\nport = '80'\n", "metrics.port = '80' must be an integer"),
        ("[metrics]\nenabled = 1\n", "metrics.enabled = 1 must be a boolean"),
        ("[bus]\nmax_inflight_total = true\n", "bus.max_inflight_total = True must be an integer"),
        ("[bus]\nmax_inflight_total = 0\n", "bus.max_inflight_total = 0 must be > 0"),
        ("[metrics]\naddress = 'localhost:1'\n", "must be an IP address"),
        ("[authorization]\ngroup_actions = ['org.schedcp.root']\n", "unknown actions"),
        ("[authorization]\npolkit = 'sometimes'\n", "must be one of auto, never"),
        ("[daemon]\nlog_level = 3\n", "daemon.log_level = 3 must be a string"),
        ("[plugins]\nuser = 'root'\n", "plugins.user = 'root' must name an unprivileged"),
        ("[plugins]\nuser = ''\n", "must name an unprivileged account"),
        ("[bus\n", "not valid TOML"),
        ("bus = 3\n", "[bus] must be a table"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_plugin_tables_are_passed_through(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "[plugins]\ndisabled = ['x']\n[plugins.scheduler]\na = 1\n"))
    assert cfg.plugin("scheduler") == {"a": 1}
    assert cfg["plugins"]["disabled"] == ["x"]


def test_shipped_config_parses_to_the_defaults() -> None:
    shipped = config.load(SHIPPED)
    assert shipped.as_dict() == config.defaults().as_dict()


def test_shipped_config_documents_every_key() -> None:
    text = SHIPPED.read_text()
    # Every key appears commented out with its default under its section.
    for section, keys in config.SCHEMA.items():
        header = re.search(rf"^\[{section}\]$", text, re.M)
        assert header, f"[{section}] is missing from {SHIPPED}"
        body = text[header.end():].split("\n[", 1)[0]
        for key, spec in keys.items():
            match = re.search(rf"^#\s*{key} = (.+)$", body, re.M)
            assert match, f"{section}.{key} is not documented in {SHIPPED}"
            value = tomllib.loads(f"v = {match.group(1)}")["v"]
            assert value == spec.default, f"{section}.{key}: documented {value!r}"
