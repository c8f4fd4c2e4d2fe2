"""The private channel between the daemon and an out-of-process plugin.

One end of a ``socketpair(AF_UNIX, SOCK_STREAM)`` stays in the daemon, the
other is inherited by the plugin's child process (and by nothing else: it is
close-on-exec in the child, and a socketpair has no name anyone could
connect to), so holding the descriptor is the authentication.

Messages are JSON objects, each framed by a 4-byte big-endian length
(at most :data:`MAX_MESSAGE` bytes).  Requests carry ``id`` and ``hook`` (the
daemon calling a plugin hook) or ``actuate`` (the plugin asking the core's
actuator); answers carry the same ``id`` and ``result`` or ``error``.  An
error is ``{"type", "message", "named"}``: ``named`` when it is one of the
engine's named errors (:mod:`schedcpd.errors`, :mod:`schedcpd.knobs`,
:mod:`schedcpd.actuator`), which is raised again by name on the other side.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
from typing import Any

from schedcpd import actuator, errors, knobs

MAX_MESSAGE = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ChannelClosed(Exception):
    """The other end closed the channel (the child exited or was killed)."""


class PluginFault(Exception):
    """The plugin raised something other than a named error (a fault: it is disabled)."""


def _named_errors() -> dict[str, type[errors.SchedcpError]]:
    out: dict[str, type[errors.SchedcpError]] = {}
    for module in (errors, knobs, actuator):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, errors.SchedcpError):
                out[value.__name__] = value
    return out


NAMED = _named_errors()


def _default(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one message (values that are not JSON are turned into JSON-able ones)."""
    data = json.dumps(message, default=_default).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes is over {MAX_MESSAGE}")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ChannelClosed("the other end closed the plugin channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> dict[str, Any]:
    """Receive one message; :class:`ChannelClosed` at end of stream."""
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if size > MAX_MESSAGE:
        raise ChannelClosed(f"message of {size} bytes is over {MAX_MESSAGE}: channel dropped")
    message = json.loads(_exactly(sock, size))
    if not isinstance(message, dict):
        raise ChannelClosed("a plugin channel message is a JSON object")
    return message


def error_of(err: BaseException) -> dict[str, Any]:
    """The wire form of an exception."""
    named = isinstance(err, errors.SchedcpError) and type(err).__name__ in NAMED
    return {"type": type(err).__name__, "message": str(err), "named": named}


def raise_error(error: Any) -> None:
    """Raise what :func:`error_of` described: the named error itself, else a PluginFault."""
    if not isinstance(error, dict):
        raise PluginFault(f"malformed error from the plugin channel: {error!r}")
    kind, message = str(error.get("type")), str(error.get("message"))
    cls = NAMED.get(kind) if error.get("named") else None
    if cls is not None:
        raise cls(message)
    raise PluginFault(f"{kind}: {message}")
