"""The control-plane API object: one method per operation, each with its action.

This is engine-side code: it never imports a bus library.  The D-Bus front
end (:mod:`schedcpd.dbus.service`) exports every method declared here with
:func:`schedcpd.api.method`; the caller's identity arrives as the first
argument, established by the transport.

Methods return exactly what the API promises (JSON text for structured
answers, so every D-Bus client and shell tool can read them).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

from schedcpd import __version__
from schedcpd.analysis_api import AnalysisAPI
from schedcpd.api import Caller, Emitter, NullEmitter, SignalSpec, api_property, method, to_json
from schedcpd.audit import AuditLog
from schedcpd.const import ACTION_ADMIN, ACTION_OBSERVE, API_VERSION
from schedcpd.deploy_api import DeployAPI
from schedcpd.errors import InvalidArgument
from schedcpd.fleet_api import FleetAPI
from schedcpd.plugins import PluginHost
from schedcpd.policy_api import PolicyAPI

_MAX_AUDIT_ROWS = 1000



class Manager(AnalysisAPI, PolicyAPI, DeployAPI, FleetAPI):
    """The ``org.schedcp.Control1.Manager`` API, transport-neutral.

    Methods are grouped by concept in mixins (:class:`AnalysisAPI`,
    :class:`PolicyAPI`, :class:`DeployAPI`, :class:`FleetAPI`); the transport sees
    one object.
    """

    SIGNALS = (
        SignalSpec(
            "DeploymentChanged",
            (("id", "s"), ("state", "s"), ("reason", "s")),
            "A deployment changed state; reason says why (e.g. the breaker's finding).",
        ),
    )

    def __init__(
        self,
        plugins: PluginHost,
        audit: AuditLog | None = None,
        status_extras: Callable[[Caller], dict[str, Any]] | None = None,
        reload: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.plugins = plugins
        self.audit = audit
        self.emitter: Emitter = NullEmitter()
        self.started = time.time()
        self._status_extras = status_extras or (lambda _caller: {})
        self._reload = reload
        self._subsystems: dict[str, dict[str, Any]] | None = None
        self._static_status: str | None = None

    def refresh_subsystems(self) -> None:
        """Re-read what plugins describe (after start-up, reload or a plugin failure).

        When the ``Subsystems`` property changes, PropertiesChanged announces
        it (the emitter may be called from a worker thread: a plugin fails
        in a hook run off the event loop).
        """
        before = None if self._subsystems is None else sorted(self._subsystems)
        self._subsystems = self.plugins.subsystems()
        self._static_status = None
        if before is not None and before != sorted(self._subsystems):
            self.emitter.properties_changed(["Subsystems"])

    def _subsystem_table(self) -> dict[str, dict[str, Any]]:
        if self._subsystems is None:
            self.refresh_subsystems()
        assert self._subsystems is not None
        return self._subsystems

    # -- properties -----------------------------------------------------

    @api_property(ACTION_OBSERVE, "s")
    def Version(self) -> str:
        """The daemon's version."""
        return __version__

    @api_property(ACTION_OBSERVE, "as")
    def Subsystems(self) -> list[str]:
        """Names of the subsystems enabled plugins provide (e.g. ``scheduler``).

        Announced with PropertiesChanged when a plugin fails or a reload changes it.
        """
        return sorted(self._subsystem_table())

    # -- methods --------------------------------------------------------

    @method(ACTION_OBSERVE, out_args=(("status", "s"),))
    def GetStatus(self, caller: Caller) -> str:
        """Daemon status as JSON: version, uptime, kernel, plugins, subsystems."""
        # The plugin and subsystem tables are most of the text and change only
        # on refresh: serialise them once (GetStatus is the hottest call).
        if self._static_status is None:
            self._static_status = to_json({
                "version": __version__,
                "api_version": API_VERSION,
                "pid": os.getpid(),
                "kernel": platform.release(),
                "subsystems": self._subsystem_table(),
                "plugins": self.plugins.status(),
            })
        dynamic = to_json({
            "uptime_seconds": round(time.time() - self.started, 3),
            "caller": {"uid": caller.uid, "pid": caller.pid},
            **self._status_extras(caller),
        })
        return f"{dynamic[:-1]},{self._static_status[1:]}"

    @method(ACTION_ADMIN, in_args=(("limit", "u"), ("method", "s")),
            out_args=(("records", "s"),))
    async def GetAudit(self, caller: Caller, limit: int, method_name: str) -> str:
        """The newest audit records as JSON (``limit`` <= 1000; ``method`` "" for all)."""
        if not 1 <= limit <= _MAX_AUDIT_ROWS:
            raise InvalidArgument(f"limit must be 1..{_MAX_AUDIT_ROWS}, got {limit}")
        if self.audit is None:
            return "[]"
        return to_json(await self.audit.recent(limit, method_name or None))

    @method(ACTION_ADMIN, out_args=(("result", "s"),), mutating=True)
    def Reload(self, caller: Caller) -> str:
        """Reload the configuration file (as SIGHUP does); JSON says what changed."""
        if self._reload is None:
            raise InvalidArgument("this daemon has no configuration file to reload")
        result = self._reload()
        self.refresh_subsystems()
        return to_json(result)
