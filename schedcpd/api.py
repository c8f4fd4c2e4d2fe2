"""Transport-neutral declaration of the control-plane API.

A method of the API is an ordinary (sync or async) method of an engine-side
class, decorated with :func:`method`, which records its D-Bus name, argument
and result signatures and — required — its authorization action.  Front ends
(the D-Bus service, the CLI's local mode, tests) read these declarations; the
engine never imports a bus library.

Adding a method to the API is one function::

    @method(ACTION_OBSERVE, in_args=(("detail", "s"),), out_args=(("summary", "s"),))
    def GetSummary(self, caller: Caller, detail: str) -> str: ...

The caller's identity is always the first argument after ``self``: it comes
from the transport (the bus), never from the call's arguments.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from schedcpd.const import ACTIONS

F = TypeVar("F", bound=Callable[..., Any])

Args = tuple[tuple[str, str], ...]


def to_json(value: Any) -> str:
    """The compact, key-sorted JSON every structured API answer uses."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the transport established it."""

    uid: int
    pid: int
    sender: str
    """The caller's unique bus name (``:1.42``), or ``local`` in-process."""
    gids: frozenset[int] | None = None
    """The connection's groups as the bus saw them at connect, when it says."""


@dataclass(frozen=True)
class MethodSpec:
    """The declaration of one API method."""

    name: str
    action: str
    in_args: Args
    out_args: Args
    mutating: bool
    doc: str
    attr: str
    is_async: bool
    #: written to the audit trail: every mutating method, and the ones that
    #: reach into the kernel for a caller without changing state (profilers)
    audited: bool = False

    @property
    def in_signature(self) -> str:
        """The D-Bus input signature."""
        return "".join(sig for _, sig in self.in_args)

    @property
    def out_signature(self) -> str:
        """The D-Bus output signature."""
        return "".join(sig for _, sig in self.out_args)


@dataclass(frozen=True)
class PropertySpec:
    """A read-only API property, readable with the ``action``."""

    name: str
    signature: str
    action: str
    doc: str
    attr: str


@dataclass(frozen=True)
class SignalSpec:
    """A signal the API emits."""

    name: str
    args: Args
    doc: str


class Emitter(Protocol):
    """How the engine announces changes; the transport implements it."""

    def emit(self, signal: str, *args: Any) -> None:
        """Emit the declared ``signal`` with ``args``."""
        ...

    def properties_changed(self, names: list[str]) -> None:
        """Announce that the named properties have new values."""
        ...


class NullEmitter:
    """An emitter that drops everything (no transport attached)."""

    def emit(self, signal: str, *args: Any) -> None:
        """Drop the signal."""

    def properties_changed(self, names: list[str]) -> None:
        """Drop the notification."""


class UnauthorizedMethod(TypeError):
    """A method was declared without a valid authorization action."""


def method(
    action: str,
    *,
    in_args: Args = (),
    out_args: Args = (),
    mutating: bool = False,
    audited: bool = False,
    name: str | None = None,
) -> Callable[[F], F]:
    """Declare an API method guarded by ``action``.

    ``mutating`` methods, and ``audited`` ones (perf stat, BPF probes: they
    attach to the kernel for the caller but change nothing), are written to
    the audit trail.  An unknown or empty ``action`` raises
    :class:`UnauthorizedMethod` at declaration.
    """
    _require_action(action, name or "method")

    def decorate(fn: F) -> F:
        fn.__schedcp_method__ = MethodSpec(  # type: ignore[attr-defined]
            name=name or fn.__name__,
            action=action,
            in_args=tuple(in_args),
            out_args=tuple(out_args),
            mutating=mutating,
            doc=inspect.cleandoc(fn.__doc__ or ""),
            attr=fn.__name__,
            is_async=inspect.iscoroutinefunction(fn),
            audited=mutating or audited,
        )
        return fn

    return decorate


def api_property(action: str, signature: str, *, name: str | None = None) -> Callable[[F], F]:
    """Declare a read-only API property computed by the decorated method."""
    _require_action(action, name or "property")

    def decorate(fn: F) -> F:
        fn.__schedcp_property__ = PropertySpec(  # type: ignore[attr-defined]
            name=name or fn.__name__,
            signature=signature,
            action=action,
            doc=inspect.cleandoc(fn.__doc__ or ""),
            attr=fn.__name__,
        )
        return fn

    return decorate


def _require_action(action: str, what: str) -> None:
    if action not in ACTIONS:
        raise UnauthorizedMethod(
            f"{what}: authorization action {action!r} is not one of {', '.join(ACTIONS)}"
        )


def collect(obj: object | type) -> tuple[list[MethodSpec], list[PropertySpec], list[SignalSpec]]:
    """All declarations on ``obj``'s class, checked; sorted by name.

    Raises :class:`UnauthorizedMethod` if any declaration lacks a valid
    action (for example one built by hand to bypass :func:`method`): such
    a method must never be exported.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    methods: list[MethodSpec] = []
    props: list[PropertySpec] = []
    for attr in dir(cls):
        member = getattr(cls, attr, None)
        spec = getattr(member, "__schedcp_method__", None)
        if spec is not None:
            _check_spec(spec)
            methods.append(spec)
        pspec = getattr(member, "__schedcp_property__", None)
        if pspec is not None:
            _require_action(pspec.action, pspec.name)
            props.append(pspec)
    signals = list(getattr(cls, "SIGNALS", ()))
    return (
        sorted(methods, key=lambda s: s.name),
        sorted(props, key=lambda s: s.name),
        sorted(signals, key=lambda s: s.name),
    )


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, MethodSpec):
        raise UnauthorizedMethod(f"{spec!r} is not a MethodSpec")
    _require_action(spec.action, spec.name)
