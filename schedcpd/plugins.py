"""The plugin host: loads subsystem plugins and calls their hooks safely.

Built-in plugins (:data:`DEFAULT_PLUGINS`) are registered exactly like
third-party ones from the ``schedcp.plugins`` entry-point group.  A plugin
that fails to import, to register, or raises in a hook is disabled: it is
unregistered, the failure is logged, counted in a metric and shown in
``GetStatus``; the daemon stays up.  A :class:`~schedcpd.errors.SchedcpError`
(e.g. ``NotSupported``, ``Conflict``) is a deliberate answer, not a fault: it
reaches the caller and the plugin stays enabled.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points
from typing import Any

import pluggy

from schedcpd import hookspecs
from schedcpd.const import PLUGIN_ENTRY_POINT_GROUP, PLUGIN_PROJECT
from schedcpd.errors import SchedcpError
from schedcpd.hookspecs import PluginContext

_LOGGER = logging.getLogger(__name__)

DEFAULT_PLUGINS: dict[str, str] = {"scheduler": "plugins.scheduler.plugin"}
"""Built-in plugin name -> module."""


@dataclass
class PluginRecord:
    """What the host knows about one plugin."""

    name: str
    origin: str
    enabled: bool = True
    error: str | None = None


class PluginHost:
    """Owns the pluggy manager and every call into plugin code."""

    def __init__(
        self,
        builtins: dict[str, str] | None = None,
        disabled: list[str] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        load_entry_points: bool = True,
    ) -> None:
        self.pm = pluggy.PluginManager(PLUGIN_PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._disabled_by_config = set(disabled or ())
        self._on_failure = on_failure
        for name, module in (DEFAULT_PLUGINS if builtins is None else builtins).items():
            self._load(name, f"builtin {module}", partial(importlib.import_module, module))
        if load_entry_points:
            for ep in entry_points(group=PLUGIN_ENTRY_POINT_GROUP):
                self._load(ep.name, f"entry point {ep.value}", ep.load)

    def _load(self, name: str, origin: str, loader: Callable[[], Any]) -> None:
        if name in self._disabled_by_config:
            self.records[name] = PluginRecord(name, origin, False, "disabled in config")
            _LOGGER.info("plugin %s (%s) disabled by configuration", name, origin)
            return
        if name in self.records:
            self._fail(PluginRecord(name, origin), f"a plugin named {name!r} is already loaded")
            return
        record = PluginRecord(name, origin)
        self.records[name] = record
        try:
            plugin = loader()
            self.pm.register(plugin, name=name)
            # An implementation without a matching spec is a plugin bug (a
            # typo, or an agent hook aimed at a privileged name): refuse it.
            self.pm.check_pending()
            if not self.pm.get_hookcallers(plugin):
                # e.g. an agent plugin (other marker): it could never be called.
                raise TypeError("implements no schedcp daemon hook (an agent plugin?)")
        except Exception as err:  # a plugin can fail in any way; isolate it
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._fail(record, f"failed to load: {err}")
            return
        _LOGGER.info("plugin %s loaded (%s)", name, origin)

    def _fail(self, record: PluginRecord, message: str) -> None:
        record.enabled = False
        record.error = message
        self.records[record.name] = record
        _LOGGER.error("plugin %s disabled: %s", record.name, message)
        if self._on_failure is not None:
            self._on_failure(record.name, message)

    def _disable(self, name: str, hook: str, err: BaseException) -> None:
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        _LOGGER.debug("%s", "".join(traceback.format_exception(err)))
        self._fail(self.records[name], f"raised in {hook}: {type(err).__name__}: {err}")

    def call_each(self, hook: str, **kwargs: Any) -> dict[str, Any]:
        """Call ``hook`` on every enabled plugin separately; return name -> result.

        A plugin that raises is disabled and left out of the result; the
        other plugins are still called.
        """
        results: dict[str, Any] = {}
        for name, plugin in list(self.pm.list_name_plugin()):
            impl = getattr(plugin, hook, None)
            if impl is None or not hasattr(impl, f"{PLUGIN_PROJECT}_impl"):
                continue
            try:
                results[name] = impl(**kwargs)
            except SchedcpError:
                raise  # a deliberate refusal (NotSupported, Conflict, ...): the caller's answer
            except Exception as err:
                self._disable(name, hook, err)
        return results

    def call_first(self, hook: str, **kwargs: Any) -> Any:
        """Call a routed (``firstresult``) hook; the first non-None answer wins."""
        return next(
            (r for r in self.call_each(hook, **kwargs).values() if r is not None), None
        )

    def startup(self, context_for: Callable[[str], PluginContext]) -> None:
        """Run every plugin's ``schedcp_startup`` with its own context."""
        for name, plugin in list(self.pm.list_name_plugin()):
            impl = getattr(plugin, "schedcp_startup", None)
            if impl is None:
                continue
            try:
                impl(context=context_for(name))
            except Exception as err:
                self._disable(name, "schedcp_startup", err)

    def shutdown(self) -> None:
        """Run every plugin's ``schedcp_shutdown``; failures are only logged."""
        self.call_each("schedcp_shutdown")

    def subsystems(self) -> dict[str, dict[str, Any]]:
        """Subsystem name -> description, from every enabled plugin."""
        out: dict[str, dict[str, Any]] = {}
        for plugin_name, desc in self.call_each("schedcp_describe").items():
            if isinstance(desc, dict) and "name" in desc:
                out[desc["name"]] = {**desc, "plugin": plugin_name}
        return out

    def status(self) -> list[dict[str, Any]]:
        """Every known plugin with its origin, state and error."""
        return [r.__dict__.copy() for r in sorted(self.records.values(), key=lambda r: r.name)]
