"""schedcpd.toml: schema, defaults and validation.

Every key the daemon reads is declared once in :data:`SCHEMA` with its type,
default and a check.  Unknown keys are warned about, never fatal (a config
written for a newer schedcpd still starts an older one); a bad value raises
:class:`~schedcpd.errors.ConfigError` naming the key and the file.  The
shipped ``etc/schedcpd.toml`` documents every key (a test checks).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schedcpd import const
from schedcpd.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

Check = Callable[[Any], str | None]


def _positive(value: Any) -> str | None:
    # An infinite limit, cap, window or lifetime is none at all (TOML has inf).
    if not math.isfinite(value):
        return "must be a finite number > 0"
    return None if value > 0 else "must be > 0"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port (1-65535, or 0 for any free port)"


def _address(value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address"
    return None


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _rate(value: Any) -> str | None:
    return None if 0.05 <= value <= 20 else "must be between 0.05 and 20 samples per second"


def _plugin_user(value: Any) -> str | None:
    # Whether the account exists is checked when a plugin starts (named in its
    # record); here only what can never be right.
    if value in ("root", "0") or not value.strip():
        return "must name an unprivileged account (third-party plugins never run as root)"
    return None


def _fraction(value: Any) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _dynamic_seconds(value: Any) -> str | None:
    return None if 0.5 <= value <= 60 else "must be between 0.5 and 60"


def _actions(value: Any) -> str | None:
    bad = [a for a in value if a not in const.ACTIONS]
    return f"unknown actions {bad}; known: {', '.join(const.ACTIONS)}" if bad else None


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and an optional check."""

    types: type | tuple[type, ...]
    default: Any
    check: Check | None = None
    item_type: type | None = None  # for lists


SCHEMA: dict[str, dict[str, Key]] = {
    "daemon": {
        "log_level": Key(str, "info", _one_of("debug", "info", "warning", "error")),
    },
    "bus": {
        "max_inflight_per_connection": Key(int, 64, _positive),
        "max_inflight_total": Key(int, 512, _positive),
        "call_timeout_seconds": Key((int, float), 120.0, _positive),
        "max_argument_bytes": Key(int, 1 << 20, _positive),
        "refused_audit_rows_per_minute": Key(int, 60, _positive),
        "refused_audit_rows_kept": Key(int, 10000, _positive),
    },
    "authorization": {
        "polkit": Key(str, "auto", _one_of("auto", "never")),
        "group": Key(str, "schedcp"),
        "everyone_actions": Key(list, [const.ACTION_OBSERVE], _actions, str),
        "group_actions": Key(
            list, [const.ACTION_OBSERVE, const.ACTION_SUBMIT], _actions, str
        ),
    },
    "metrics": {
        "enabled": Key(bool, True),
        "address": Key(str, const.DEFAULT_METRICS_ADDRESS, _address),
        "port": Key(int, const.DEFAULT_METRICS_PORT, _port),
    },
    "plugins": {
        "disabled": Key(list, [], None, str),
        "user": Key(str, "nobody", _plugin_user),
    },
    "analysis": {
        "rate_hz": Key((int, float), 1.0, _rate),
        "window_seconds": Key((int, float), 60.0, _positive),
        "top_n": Key(int, 8, _positive),
        "perf_max_seconds": Key((int, float), 30.0, _positive),
    },
    "probes": {
        "bpf_dir": Key(str, "auto"),
        "max_concurrent": Key(int, 4, _positive),
        "max_seconds": Key((int, float), 60.0, _positive),
        "per_caller_per_minute": Key(int, 6, _positive),
    },
    "repository": {
        "builtin_dir": Key(str, "auto"),
        "dropin_dir": Key(str, "/etc/schedcp/policies.d"),
        "agent_user": Key(str, "schedcp-agent"),
        # Of a policy document whose [policy] table names no subsystem (every
        # document written before the io and dvfs plugins).
        "default_subsystem": Key(str, "scheduler"),
    },
    "deployer": {
        "baseline_seconds": Key((int, float), 2.0, _positive),
        "canary_seconds": Key((int, float), 3.0, _positive),
        "full_seconds": Key((int, float), 3.0, _positive),
        "backoff_seconds": Key((int, float), 60.0, _positive),
    },
    "breaker": {
        "rate_hz": Key((int, float), 10.0, _positive),
        "threshold": Key((int, float), 2.0, _positive),
        "absolute_floor_us": Key((int, float), 200.0, _positive),
        "agreement": Key((int, float), 0.7, _fraction),
        "min_samples": Key(int, 8, _positive),
        "window": Key(int, 15, _positive),
        "throughput_floor": Key((int, float), 0.5, _fraction),
        "interactive_share": Key((int, float), 0.6, _fraction),
        "stall_seconds": Key((int, float), 2.0, _positive),
    },
    "debug": {
        "fault_injection": Key(bool, False),
    },
    "verifier": {
        "token_lifetime_seconds": Key((int, float), 900.0, _positive),
        "dynamic_seconds": Key((int, float), 3.0, _dynamic_seconds),
        "trusted_keys_dir": Key(str, "/etc/schedcp/trusted-keys.d"),
        "revoked_keys_file": Key(str, "/etc/schedcp/revoked-keys"),
        "range_verification": Key(bool, False),
        "range_lifetime_seconds": Key((int, float), 3600.0, _positive),
    },
}

# Tables whose sub-tables are free-form and handed to someone else to check
# (``[plugins.<name>]`` goes to that plugin).
_OPEN_SUBTABLES = {"plugins"}


class Config:
    """A validated configuration: ``config["bus"]["max_inflight_total"]``."""

    def __init__(self, values: dict[str, dict[str, Any]], path: Path | None,
                 plugin_tables: dict[str, dict[str, Any]]) -> None:
        self._values = values
        self.path = path
        self.plugin_tables = plugin_tables

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self._values[section]

    def plugin(self, name: str) -> dict[str, Any]:
        """The free-form ``[plugins.<name>]`` table (empty when absent)."""
        return self.plugin_tables.get(name, {})

    def as_dict(self) -> dict[str, Any]:
        """All values, for status output."""
        return {s: dict(v) for s, v in self._values.items()}


def defaults() -> Config:
    """The configuration used when no file exists."""
    return _validate({}, None)


def load(path: Path | str | None) -> Config:
    """Read and validate ``path``; a missing file means the defaults.

    Raises :class:`ConfigError` for unreadable TOML or a bad value.
    """
    if path is None:
        return defaults()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        _LOGGER.info("config %s does not exist; using defaults", path)
        return defaults()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    return _validate(raw, path)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array"}
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in types)


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _validate(raw: dict[str, Any], path: Path | None) -> Config:
    where = str(path) if path else "<defaults>"
    values: dict[str, dict[str, Any]] = {}
    plugin_tables: dict[str, dict[str, Any]] = {}
    for section in raw:
        if section not in SCHEMA:
            _LOGGER.warning("%s: unknown section [%s] ignored", where, section)
        elif not isinstance(raw[section], dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
    for section, keys in SCHEMA.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            table = {}
        values[section] = {}
        for name, value in table.items():
            if name in keys:
                continue
            if section in _OPEN_SUBTABLES and isinstance(value, dict):
                plugin_tables[name] = value
                continue
            _LOGGER.warning("%s: unknown key %s.%s ignored", where, section, name)
        for name, key in keys.items():
            if name not in table:
                values[section][name] = _copy(key.default)
                continue
            values[section][name] = _check(where, f"{section}.{name}", key, table[name])
    return Config(values, path, plugin_tables)


def _check(where: str, dotted: str, key: Key, value: Any) -> Any:
    # bool is an int in Python; a boolean where a number belongs is a mistake.
    wrong_bool = isinstance(value, bool) and key.types is not bool
    if wrong_bool or not isinstance(value, key.types):
        raise ConfigError(
            f"{where}: {dotted} = {value!r} must be {_a(_type_name(key.types))}"
        )
    if key.item_type is not None and isinstance(value, list):
        for item in value:
            if not isinstance(item, key.item_type):
                raise ConfigError(
                    f"{where}: {dotted} items must be {_type_name(key.item_type)}s, "
                    f"got {item!r}"
                )
    if key.check is not None and (problem := key.check(value)) is not None:
        raise ConfigError(f"{where}: {dotted} = {value!r} {problem}")
    return value


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
