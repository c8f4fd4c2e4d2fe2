"""One exception hierarchy with stable names.

Engine code raises these; the D-Bus layer maps each to the named error
``org.schedcp.Control1.Error.<name>`` with the exception's message.  Anything
else that escapes a handler becomes ``Error.Internal`` with no traceback for
the caller (the log keeps it).
"""

from __future__ import annotations

from schedcpd.const import ERROR_PREFIX


class SchedcpError(Exception):
    """Base class; ``name`` is the last component of the D-Bus error name."""

    name = "Failed"

    @property
    def dbus_name(self) -> str:
        """The full D-Bus error name for this error."""
        return f"{ERROR_PREFIX}.{self.name}"


class AccessDenied(SchedcpError):
    """The caller is not authorized for the method's action."""

    name = "AccessDenied"


class NotOwner(AccessDenied):
    """The caller may call the method, but not on this object: it belongs to another uid.

    A deployment is rolled back, held or released only by the uid that
    deployed it, or by an admin (``org.schedcp.admin``, or root).
    """

    name = "NotOwner"


class InvalidArgument(SchedcpError):
    """An argument failed validation; the message names it."""

    name = "InvalidArgument"


class UnknownProperty(InvalidArgument):
    """Properties.Get of a property (or interface) the object does not have.

    Answered with the standard ``org.freedesktop.DBus.Error.UnknownProperty``
    / ``UnknownInterface`` that gdbus, busctl and sd-bus clients expect.
    """

    name = "UnknownProperty"

    def __init__(self, message: str = "", *, interface: bool = False) -> None:
        super().__init__(message)
        self._standard = "UnknownInterface" if interface else "UnknownProperty"

    @property
    def dbus_name(self) -> str:
        """The freedesktop error name, not the schedcp one."""
        return f"org.freedesktop.DBus.Error.{self._standard}"


class NotFound(SchedcpError):
    """The named object (policy, deployment, probe ...) does not exist."""

    name = "NotFound"


class Busy(SchedcpError):
    """A limit on concurrent work was reached; retry later."""

    name = "Busy"


class NotSupported(SchedcpError):
    """The running kernel or configuration lacks what the call needs."""

    name = "NotSupported"


class Conflict(SchedcpError):
    """The request conflicts with current state (e.g. an active policy)."""

    name = "Conflict"


class ObjectMismatch(SchedcpError):
    """The object about to be loaded, or the running kernel, is not what the token binds.

    A T2 token carries the SHA-256 of the BPF object the verifier loaded and
    of the kernel BTF it loaded it against; another object (rebuilt,
    tampered) or another kernel is refused rather than deployed unverified.
    """

    name = "ObjectMismatch"


class Timeout(SchedcpError):
    """The call took longer than the configured limit and was abandoned."""

    name = "Timeout"


class Internal(SchedcpError):
    """An unexpected failure inside the daemon; details are in its log."""

    name = "Internal"


class ConfigError(SchedcpError):
    """A configuration file holds a bad value; the message names key and file."""

    name = "ConfigError"
