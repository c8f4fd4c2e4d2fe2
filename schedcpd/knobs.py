"""Knob declarations and change sets: what a plugin may ask the core to write.

A subsystem plugin does not write kernel state itself.  It **declares** its
knobs once (:class:`Knob`, from the ``schedcp_knobs`` hook) and then hands
the core's actuator (:mod:`schedcpd.actuator`) **change sets**: lists of
:class:`KnobChange` (knob, target, value).  The actuator checks each change
against the plugin's declarations, journals the old value and writes; a
change outside them is refused with :class:`KnobNotDeclared` (or
:class:`KnobValueRefused` for a value outside the declared type and range)
and nothing is written.

Two kinds of knob:

- ``file``: a sysfs/procfs/cgroupfs file.  ``paths`` are glob patterns
  (``*``, ``?``, ``[...]``) of absolute paths; one ``/**/`` (any depth,
  for cgroup trees) may follow a literal prefix.  A change's target
  is allowed when its real path (symlinks and ``..`` resolved) is the real
  path of a file one of the patterns matches now.  The value is the file's
  text; it is read back as the file's text without the trailing newline.
  ``format`` says how the text is read for other sysfs idioms:
  ``"selected"`` (a choice list such as ``none [mq-deadline] kyber``: the
  value is the bracketed word) or ``"keyed"`` (lines ``<key> <value>``,
  such as ``blkio.throttle.*_device``: a change's value is one line
  ``<key> <value>``, its live value that key's line, ``<key> 0`` when the
  file has none - the cgroup convention where writing 0 removes a line).
  ``resets`` names files beside the target (``("nr_requests",)``) that the
  kernel resets when this one is written (switching an I/O scheduler resets
  the queue depth): the actuator journals their values before the write and
  puts them back right after restoring this knob (:mod:`schedcpd.actuator`).
- ``syscall``: one of the named syscalls the core knows
  (:data:`schedcpd.actuator.SYSCALLS`, e.g. ``ioprio_set``).  The target is
  ``"<tid>:<start time>"`` (the start time in clock ticks, field 22 of
  ``/proc/<tid>/stat``), so a reused tid is a different target.

Values: ``type`` ``"str"`` (optionally one of ``allowed``, or matching the
regular expression ``regex``), ``"int"`` (within ``minimum..maximum``; a file
knob's text must parse as one) or ``"int_list"`` (each element within range,
``length`` elements).  Restore writes the journaled prior value back
(``restore = "prior"``); a syscall may reset instead (``"reset"``: the
syscall's own notion of "not set", e.g. uclamp's -1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from schedcpd.errors import InvalidArgument

FILE = "file"
SYSCALL = "syscall"
KINDS = (FILE, SYSCALL)
VALUE_TYPES = ("str", "int", "int_list")
RESTORE_MODES = ("prior", "reset")
FORMATS = ("text", "selected", "keyed")


class KnobNotDeclared(InvalidArgument):
    """A change names a knob the plugin did not declare, or a target outside it."""

    name = "KnobNotDeclared"


class KnobValueRefused(InvalidArgument):
    """A change's value is outside its knob's declared type, range or set."""

    name = "KnobValueRefused"


class BadDeclaration(InvalidArgument):
    """A plugin's knob declaration is malformed."""

    name = "BadDeclaration"


@dataclass(frozen=True)
class Knob:
    """One knob a plugin may change, and how the core reads, checks and restores it."""

    name: str
    kind: str
    paths: tuple[str, ...] = ()
    syscall: str = ""
    type: str = "str"
    allowed: tuple[str, ...] = ()
    regex: str = ""
    minimum: int | None = None
    maximum: int | None = None
    length: int | None = None
    restore: str = "prior"
    description: str = ""
    format: str = "text"
    resets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"knob {self.name!r}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", self.name or ""):
            raise BadDeclaration(f"{where}: a knob name is letters, digits, _ . -")
        if self.kind not in KINDS:
            raise BadDeclaration(f"{where}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == FILE:
            if not self.paths:
                raise BadDeclaration(f"{where}: a file knob declares its path patterns")
            for p in self.paths:
                prefix, deep, rest = p.partition("/**/")
                if not p.startswith("/") or "\0" in p or "**" in rest or (
                        "**" in prefix) or (deep and any(c in prefix for c in "*?[")):
                    raise BadDeclaration(f"{where}: {p!r} is not an absolute glob pattern "
                                         "(with at most one /**/, after a literal prefix)")
        elif not self.syscall:
            raise BadDeclaration(f"{where}: a syscall knob names its syscall")
        if self.format not in FORMATS or (self.format != "text" and self.kind != FILE):
            raise BadDeclaration(f"{where}: format {self.format!r} is not one of {FORMATS} "
                                 "(a format other than text is a file knob's)")
        if self.resets and (self.kind != FILE or not all(
                re.fullmatch(r"[A-Za-z0-9_.-]+", r) for r in self.resets)):
            raise BadDeclaration(f"{where}: resets names files beside a file knob's target "
                                 f"(plain names), not {self.resets!r}")
        if self.type not in VALUE_TYPES:
            raise BadDeclaration(f"{where}: type {self.type!r} is not one of {VALUE_TYPES}")
        if self.restore not in RESTORE_MODES:
            raise BadDeclaration(f"{where}: restore {self.restore!r} is not one of "
                                 f"{RESTORE_MODES}")
        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise BadDeclaration(f"{where}: bad regex: {err}") from err

    def check_value(self, value: Any) -> Any:
        """``value`` normalised (file values as text); :class:`KnobValueRefused` if outside."""
        where = f"knob {self.name!r}"
        if self.type == "int_list":
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise KnobValueRefused(f"{where}: {value!r} is not a list of integers")
            if self.length is not None and len(value) != self.length:
                raise KnobValueRefused(f"{where}: {value!r} is not {self.length} integers")
            for v in value:
                self._in_range(v)
            return [int(v) for v in value]
        if self.type == "int":
            try:
                number = int(str(value).strip())
            except ValueError as err:
                raise KnobValueRefused(f"{where}: {value!r} is not an integer") from err
            self._in_range(number)
            return str(number) if self.kind == FILE else number
        text = str(value)
        if not isinstance(value, (str, int)) or isinstance(value, bool) or "\n" in text.strip():
            raise KnobValueRefused(f"{where}: {value!r} is not one line of text")
        text = text.strip()
        if self.allowed and text not in self.allowed:
            raise KnobValueRefused(f"{where}: {text!r} is not one of "
                                   f"{', '.join(self.allowed)}")
        if self.format == "keyed" and len(text.split()) != 2:
            raise KnobValueRefused(f"{where}: {text!r} is not one line '<key> <value>'")
        if self.format == "keyed":
            text = " ".join(text.split())
        if self.regex and not re.fullmatch(self.regex, text):
            raise KnobValueRefused(f"{where}: {text!r} does not match {self.regex!r}")
        return text

    def _in_range(self, number: int) -> None:
        if (self.minimum is not None and number < self.minimum) or (
                self.maximum is not None and number > self.maximum):
            raise KnobValueRefused(f"knob {self.name!r}: {number} is outside "
                                   f"[{self.minimum}, {self.maximum}]")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for the out-of-process channel)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Knob:
        """The inverse of :meth:`as_dict`; :class:`BadDeclaration` on bad data."""
        if not isinstance(data, dict):
            raise BadDeclaration(f"a knob declaration is a table, not {data!r}")
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known
        if extra:
            raise BadDeclaration(f"unknown knob declaration field(s): {sorted(extra)}")
        values = dict(data)
        for name in ("paths", "allowed", "resets"):
            if name in values:
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except TypeError as err:
            raise BadDeclaration(str(err)) from err


@dataclass(frozen=True)
class KnobChange:
    """One change of a change set: set ``knob`` on ``target`` to ``value``.

    ``key`` is the journal key the plugin names the value by (it answers
    ``schedcp_describe_key`` and ``schedcp_explain_keys`` for it); the core
    journals under it, with ``knob`` as the entry's kind and ``target``.
    """

    knob: str
    target: str
    value: Any
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for the out-of-process channel)."""
        return {"knob": self.knob, "target": self.target, "value": self.value,
                "key": self.key, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Any) -> KnobChange:
        """The inverse of :meth:`as_dict`; :class:`InvalidArgument` on bad data."""
        if not isinstance(data, dict) or not isinstance(data.get("knob"), str) or \
                not isinstance(data.get("target"), str) or "value" not in data:
            raise InvalidArgument(f"a change is {{knob, target, value}}, not {data!r}")
        return cls(data["knob"], data["target"], data["value"], str(data.get("key", "")),
                   dict(data.get("meta") or {}))


def declarations(knobs: Iterable[Knob | dict[str, Any]]) -> dict[str, Knob]:
    """Knob name -> declaration; :class:`BadDeclaration` on a duplicate or a bad one."""
    out: dict[str, Knob] = {}
    for item in knobs:
        knob = item if isinstance(item, Knob) else Knob.from_dict(item)
        if knob.name in out:
            raise BadDeclaration(f"knob {knob.name!r} is declared twice")
        out[knob.name] = knob
    return out
