"""Caps, limits and windows in schedcpd.toml are real: finite, positive.

The analysis and probe caps first; then every other number the config
accepts as a float (TOML has ``inf`` and ``nan``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schedcpd import config
from schedcpd.errors import ConfigError

CAPS = [("analysis", "window_seconds"), ("analysis", "perf_max_seconds"),
        ("probes", "max_seconds")]
FLOATS = [(section, key) for section, keys in config.SCHEMA.items()
          for key, spec in keys.items()
          if isinstance(spec.types, tuple) and float in spec.types]


def assert_refused(tmp_path: Path, section: str, key: str, value: str) -> None:
    """``[section] key = value`` is a configuration error naming file and key.

    (Exit 2 at start, not a traceback when the engine refuses it, nor an
    unbounded run.)
    """
    path = tmp_path / "schedcpd.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"{path}: {section}\.{key} = "):
        config.load(path)


@pytest.mark.parametrize(("section", "key"), CAPS)
@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_a_cap_must_be_finite_and_positive(tmp_path: Path, section: str, key: str,
                                           value: str) -> None:
    assert_refused(tmp_path, section, key, value)


@pytest.mark.parametrize(("section", "key"), CAPS)
def test_a_finite_cap_is_kept(tmp_path: Path, section: str, key: str) -> None:
    path = tmp_path / "schedcpd.toml"
    path.write_text(f"[{section}]\n{key} = 600.5\n")
    assert config.load(path)[section][key] == 600.5


@pytest.mark.parametrize(("section", "key"), FLOATS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_number_in_the_config_may_be_infinite(tmp_path: Path, section: str, key: str,
                                                value: str) -> None:
    assert_refused(tmp_path, section, key, value)


def test_every_float_key_is_covered() -> None:
    assert len(FLOATS) >= 12 and set(CAPS) <= set(FLOATS), FLOATS
