"""Export the Manager API on the bus: dispatch, authorization, limits, errors.

dbus-fast's ``ServiceInterface`` does not tell a method who called it, so the
API is served by a message handler of our own: it sees the sender of every
call, resolves the caller's uid/pid through the bus (cached per connection),
checks the method's declared action, bounds the calls in flight (per
connection and overall, answering ``Error.Busy`` past them), validates the
signature and argument size, runs the engine method, and maps any failure to
a named error (``org.schedcp.Control1.Error.*``) — never a traceback.  Calls
refused before dispatch are audited too, within the bounds of
:class:`~schedcpd.audit.RefusalLimiter`.

Read-only calls whose caller is already known and allowed without asking
polkit are answered synchronously inside the handler (no task, no await):
that is most calls, and it keeps their round trip near the bus's own floor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.constants import ErrorType
from dbus_fast.signature import get_signature_tree

from schedcpd import errors
from schedcpd.api import Caller, MethodSpec, PropertySpec, collect
from schedcpd.audit import AuditLog, AuditRecord, RefusalLimiter, digest_arguments
from schedcpd.authz import Authorizer
from schedcpd.const import ACTIONS, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus
from schedcpd.dbus.identity import CallerResolver
from schedcpd.dbus.introspect import children_xml, manager_interface, object_xml
from schedcpd.metrics import Metrics

_LOGGER = logging.getLogger(__name__)

INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PROPERTIES = "org.freedesktop.DBus.Properties"
PEER = "org.freedesktop.DBus.Peer"


def _ancestors(path: str) -> dict[str, str]:
    """Each ancestor path of ``path`` -> the name of its child on the way down."""
    parts = path.strip("/").split("/")
    return {"/" + "/".join(parts[:i]) if i else "/": parts[i] for i in range(len(parts))}


_ANCESTORS = _ancestors(OBJECT_PATH)


def _payload_size(value: Any) -> int:
    """Rough size in bytes of a message body (strings and containers)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(_payload_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_payload_size(k) + _payload_size(v) for k, v in value.items())
    if isinstance(value, Variant):
        return _payload_size(value.value)
    return 8


def _property_method(name: str, action: str, in_sig: str, out_sig: str) -> MethodSpec:
    return MethodSpec(
        name=name, action=action, in_args=tuple((f"a{i}", s) for i, s in enumerate(in_sig)),
        out_args=(("value", out_sig),) if out_sig else (), mutating=False, doc="",
        attr="", is_async=False,
    )


class ManagerService:
    """Serves one engine object at :data:`OBJECT_PATH` on ``bus``."""

    def __init__(
        self,
        bus: MessageBus,
        manager: Any,
        resolver: CallerResolver,
        authorizer: Authorizer,
        metrics: Metrics,
        audit: AuditLog | None,
        settings: dict[str, Any],
    ) -> None:
        self._bus = bus
        self._manager = manager
        self._resolver = resolver
        self._authorizer = authorizer
        self._metrics = metrics
        self._audit = audit
        methods, props, signals = collect(manager)
        self._methods = {m.name: m for m in methods}
        self._props: dict[str, PropertySpec] = {p.name: p for p in props}
        self._signals = {s.name: s for s in signals}
        self._interface = manager_interface(methods, props, signals)
        self._xml = object_xml(self._interface)
        most = max((ACTIONS.index(p.action) for p in props), default=0)
        self._prop_get = _property_method("Properties.Get", ACTIONS[0], "ss", "v")
        self._prop_getall = _property_method("Properties.GetAll", ACTIONS[most], "s", "a{sv}")
        self._inflight: dict[str, int] = {}
        self._inflight_total = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusals = RefusalLimiter(settings["refused_audit_rows_per_minute"])
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._call_counter = {name: metrics.calls.labels(name) for name in self._methods}
        self._latency = {name: metrics.latency.labels(name) for name in self._methods}
        self.reconfigure(settings)

    @property
    def introspection_xml(self) -> str:
        """The object's introspection XML as served on the bus."""
        return self._xml

    def reconfigure(self, settings: dict[str, Any]) -> None:
        """Apply a (re)loaded ``[bus]`` table."""
        self._max_per_conn = settings["max_inflight_per_connection"]
        self._max_total = settings["max_inflight_total"]
        self._timeout = float(settings["call_timeout_seconds"])
        self._max_arg_bytes = settings["max_argument_bytes"]
        self._refusals.configure(settings["refused_audit_rows_per_minute"])
        self._refusals_kept = settings["refused_audit_rows_kept"]

    def export(self) -> None:
        """Start answering calls on the bus (from the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._bus.add_message_handler(self._on_message)

    async def close(self) -> None:
        """Stop answering and cancel calls still running."""
        self._bus.remove_message_handler(self._on_message)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- signals --------------------------------------------------------

    def _send(self, make: Callable[[], Message]) -> None:
        """Send a signal from the event loop, whichever thread asks.

        The engine may announce a change from a worker thread (a plugin that
        fails inside a hook run with ``asyncio.to_thread``); the bus
        connection belongs to the loop.
        """
        if self._loop is None or threading.get_ident() == self._loop_thread:
            self._bus.send(make())
        else:
            self._loop.call_soon_threadsafe(lambda: self._bus.send(make()))

    def emit(self, signal: str, *args: Any) -> None:
        """Emit a declared signal of the Manager interface."""
        spec = self._signals[signal]
        self._send(lambda: Message.new_signal(
            OBJECT_PATH, MANAGER_INTERFACE, signal, "".join(s for _, s in spec.args), list(args)
        ))

    def properties_changed(self, names: list[str]) -> None:
        """Emit PropertiesChanged with the new values of ``names`` (read when sent)."""
        def make() -> Message:
            changed = {n: Variant(self._props[n].signature, self._read_property(n))
                       for n in names}
            return Message.new_signal(OBJECT_PATH, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                      [MANAGER_INTERFACE, changed, []])

        self._send(make)

    # -- dispatch -------------------------------------------------------

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        iface, member = msg.interface, msg.member
        if msg.path != OBJECT_PATH:
            child = _ANCESTORS.get(msg.path or "")
            if child is not None and member == "Introspect" and iface in (None, INTROSPECTABLE):
                return Message.new_method_return(msg, "s", [children_xml([child])])
            return None
        if member == "Introspect" and iface in (None, INTROSPECTABLE):
            return Message.new_method_return(msg, "s", [self._xml])
        if iface == PEER:
            return None  # dbus-fast answers Ping and GetMachineId itself
        run: Callable[[Caller, list[Any]], Any]
        if iface == PROPERTIES:
            if member == "Get":
                spec, run = self._prop_get, self._get_property
            elif member == "GetAll":
                spec, run = self._prop_getall, self._get_all
            elif member == "Set":
                return self._refuse(msg, "Properties.Set", ErrorType.PROPERTY_READ_ONLY.value,
                                    "all properties of this object are read-only")
            else:
                return self._refuse(msg, f"Properties.{member}", ErrorType.UNKNOWN_METHOD.value,
                                    f"unknown method {member}")
        elif iface in (MANAGER_INTERFACE, None):
            found = self._methods.get(member or "")
            if found is None:
                return self._refuse(msg, member or "", ErrorType.UNKNOWN_METHOD.value,
                                    f"{MANAGER_INTERFACE} has no method {member!r}")
            spec, run = found, self._bind(found)
        else:
            return self._refuse(msg, f"{iface}.{member}", ErrorType.UNKNOWN_INTERFACE.value,
                                f"{OBJECT_PATH} has no interface {iface!r}")
        return self._admit(msg, spec, run)

    def _bind(self, spec: MethodSpec) -> Callable[[Caller, list[Any]], Any]:
        fn = getattr(self._manager, spec.attr)
        return lambda caller, args: fn(caller, *args)

    def _admit(self, msg: Message, spec: MethodSpec,
               run: Callable[[Caller, list[Any]], Any]) -> Message | bool:
        start = time.perf_counter()
        try:
            self._check_arguments(msg, spec)
        except errors.SchedcpError as err:
            return self._refused_reply(msg, spec, err, start)
        sender = msg.sender or ""
        mine = self._inflight.get(sender, 0)
        if self._inflight_total >= self._max_total or mine >= self._max_per_conn:
            return self._refused_reply(msg, spec, errors.Busy(
                f"too many calls in flight ({self._inflight_total} overall, "
                f"{mine} from {sender}); retry later"), start)
        caller = self._resolver.cached(sender)
        if (caller is not None and not spec.is_async and not spec.audited
                and self._authorizer.decide_locally(caller, spec.action)):
            try:
                result = run(caller, msg.body)
            except Exception as err:
                return self._error_reply(msg, spec, err, start)
            return self._result_reply(msg, spec, result, start)
        self._inflight[sender] = self._inflight.get(sender, 0) + 1
        self._inflight_total += 1
        self._metrics.inflight.inc()
        task = asyncio.get_running_loop().create_task(self._handle(msg, spec, run, start))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _handle(self, msg: Message, spec: MethodSpec,
                      run: Callable[[Caller, list[Any]], Any], start: float) -> None:
        sender = msg.sender or ""
        caller: Caller | None = None
        outcome = "ok"
        try:
            caller = await self._resolver.resolve(sender)
            await self._authorizer.authorize(caller, spec.action)
            result = run(caller, msg.body)
            if isinstance(result, Awaitable):
                result = await asyncio.wait_for(result, self._timeout)
            reply = self._result_reply(msg, spec, result, start)
        except TimeoutError:
            timeout = errors.Timeout(f"{spec.name} did not finish within {self._timeout:g} s")
            outcome = timeout.dbus_name
            reply = self._error_reply(msg, spec, timeout, start)
        except asyncio.CancelledError:
            stopping = errors.Internal("the daemon is shutting down")
            self._bus.send(self._error_reply(msg, spec, stopping, start))
            raise
        except Exception as exc:
            reply = self._error_reply(msg, spec, exc, start)
            outcome = reply.error_name or "error"
        finally:
            self._release(sender)
        if spec.audited and self._audit is not None and caller is not None:
            await self._audit_call(caller, spec, msg.body, outcome)
        if caller is None and spec.audited:
            _LOGGER.warning("%s from %s refused before identity was known: %s",
                            spec.name, sender, outcome)
        self._bus.send(reply)

    def _release(self, sender: str) -> None:
        self._inflight_total -= 1
        self._metrics.inflight.dec()
        left = self._inflight[sender] - 1
        if left:
            self._inflight[sender] = left
        else:
            del self._inflight[sender]

    async def _audit_call(self, caller: Caller, spec: MethodSpec, args: list[Any],
                          outcome: str) -> None:
        assert self._audit is not None
        try:
            await self._audit.record(AuditRecord(
                uid=caller.uid, pid=caller.pid, sender=caller.sender, method=spec.name,
                args_digest=digest_arguments(args), result=outcome,
            ))
        except Exception:
            _LOGGER.exception("could not write the audit record for %s", spec.name)

    # -- refused before dispatch ----------------------------------------

    def _refuse(self, msg: Message, method: str, name: str, text: str) -> Message | bool:
        return self._note_refusal(msg, method, name, text, Message.new_error(msg, name, text))

    def _refused_reply(self, msg: Message, spec: MethodSpec, err: errors.SchedcpError,
                       start: float) -> Message | bool:
        reply = self._error_reply(msg, spec, err, start)
        return self._note_refusal(msg, spec.name, err.dbus_name, str(err), reply)

    def _note_refusal(self, msg: Message, method: str, name: str, text: str,
                      reply: Message) -> Message | bool:
        """Audit a refused call: a row of its own, or counted in a ``suppressed`` row.

        Returns the reply to send now, or True when the refusal has a row of
        its own: then the reply goes out once the row is written.  The caller
        waits for it, so it is still on the bus while its identity is resolved
        (a caller that had already left was audited as uid -1), and a reply
        received means its row is there.  Suppressed refusals (a flood) are
        answered at once.
        """
        if self._audit is None:
            return reply
        sender = msg.sender or ""
        admitted = self._refusals.admit(sender, name)
        self._flush_suppressed()
        if not admitted:
            return reply
        self._spawn(self._audit_refusal(sender, method, msg.body, name, text, reply))
        return True

    def _on_flush_timer(self) -> None:
        self._flush_timer = None
        self._flush_suppressed()

    def _flush_suppressed(self) -> None:
        for window in self._refusals.due():
            self._spawn(self._write_refused(window.record()))
        if self._refusals.suppressing and self._flush_timer is None:
            # Written when the window ends even if no refusal follows.
            self._flush_timer = asyncio.get_running_loop().call_later(
                self._refusals.seconds_left() + 0.01, self._on_flush_timer)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _audit_refusal(self, sender: str, method: str, body: list[Any], name: str,
                             text: str, reply: Message) -> None:
        try:
            try:
                caller = await asyncio.wait_for(self._resolver.resolve(sender), self._timeout)
                uid, pid = caller.uid, caller.pid
            except Exception:  # the caller left the bus, or the bus did not answer
                uid = pid = -1
                text += " (the caller's identity could not be resolved)"
            await self._write_refused(AuditRecord(
                uid=uid, pid=pid, sender=sender, method=method,
                args_digest=digest_arguments(body), result=name, detail=text))
        finally:
            self._bus.send(reply)

    async def _write_refused(self, rec: AuditRecord) -> None:
        assert self._audit is not None
        try:
            await self._audit.record_refused(rec, self._refusals_kept)
        except Exception:
            _LOGGER.exception("could not write the audit record of a refused %s", rec.method)

    def _check_arguments(self, msg: Message, spec: MethodSpec) -> None:
        if msg.signature != spec.in_signature:
            raise errors.InvalidArgument(
                f"{spec.name} takes arguments of signature {spec.in_signature!r}, "
                f"got {msg.signature!r}")
        if spec.in_signature and _payload_size(msg.body) > self._max_arg_bytes:
            raise errors.InvalidArgument(
                f"{spec.name}: arguments exceed {self._max_arg_bytes} bytes")

    def _result_reply(self, msg: Message, spec: MethodSpec, result: Any, start: float) -> Message:
        body: list[Any]
        if not spec.out_args:
            body = []
        elif len(spec.out_args) == 1:
            body = [result]
        else:
            body = list(result)
        try:
            # dbus-fast checks the body only when it marshals the message, on
            # send, where a mismatch would be lost and the caller never answered.
            if spec.out_signature:
                get_signature_tree(spec.out_signature).verify(body)
            reply = Message.new_method_return(msg, spec.out_signature, body)
        except Exception as err:  # the engine returned the wrong type
            return self._error_reply(msg, spec, err, start)
        self._count(spec, start)
        return reply

    def _error_reply(self, msg: Message, spec: MethodSpec, exc: BaseException,
                     start: float) -> Message:
        if isinstance(exc, errors.SchedcpError):
            name, text = exc.dbus_name, str(exc) or exc.name
        else:
            _LOGGER.error("%s failed", spec.name, exc_info=exc)
            name = errors.Internal().dbus_name
            text = f"internal error in {spec.name} ({type(exc).__name__}); see the daemon log"
        self._count(spec, start)
        self._metrics.errors.labels(spec.name, name.rsplit(".", 1)[-1]).inc()
        return Message.new_error(msg, name, text)

    def _count(self, spec: MethodSpec, start: float) -> None:
        counter = self._call_counter.get(spec.name)
        if counter is None:
            counter = self._call_counter[spec.name] = self._metrics.calls.labels(spec.name)
            self._latency[spec.name] = self._metrics.latency.labels(spec.name)
        counter.inc()
        self._latency[spec.name].observe(time.perf_counter() - start)

    # -- properties -----------------------------------------------------

    def _read_property(self, name: str) -> Any:
        return getattr(self._manager, self._props[name].attr)()

    def _get_property(self, caller: Caller, args: list[Any]) -> Any:
        iface, name = args
        if iface != MANAGER_INTERFACE:
            raise errors.UnknownProperty(f"{OBJECT_PATH} has no interface {iface!r}",
                                         interface=True)
        if name not in self._props:
            raise errors.UnknownProperty(f"{MANAGER_INTERFACE} has no property {name!r}")
        prop = self._props[name]
        if not self._authorizer.decide_locally(caller, prop.action):
            raise errors.AccessDenied(f"reading {name} needs {prop.action}")
        return Variant(prop.signature, self._read_property(name))

    def _get_all(self, caller: Caller, args: list[Any]) -> dict[str, Variant]:
        if args[0] not in (MANAGER_INTERFACE, ""):
            return {}
        return {n: Variant(p.signature, self._read_property(n)) for n, p in self._props.items()}
