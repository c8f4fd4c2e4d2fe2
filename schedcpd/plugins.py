"""The plugin host: loads subsystem plugins and calls their hooks safely.

Built-in plugins (:data:`DEFAULT_PLUGINS`) are registered exactly like
third-party ones from the ``schedcp.plugins`` entry-point group.  A plugin
that fails to import, to register, or raises in a hook is disabled: it is
unregistered, the failure is logged, counted in a metric and shown in
``GetStatus``; the daemon stays up.  A :class:`~schedcpd.errors.SchedcpError`
(e.g. ``NotSupported``, ``Conflict``) is a deliberate answer, not a fault: it
reaches the caller and the plugin stays enabled.

pluggy dispatches every call (argument checks against the spec,
``firstresult``), one plugin at a time through a subset hook caller, so a
fault is always one plugin's.  A routed hook (``subsystem=`` first) goes to
the plugin that describes that subsystem (``schedcp_describe``), and to
every plugin only for a name none describes (e.g. a plugin's own journal
subsystem in ``schedcp_describe_key``).
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
from pluggy import HookCaller

from schedcpd import hookspecs
from schedcpd.actuator import KnobActuator
from schedcpd.const import PLUGIN_ENTRY_POINT_GROUP, PLUGIN_PROJECT
from schedcpd.errors import SchedcpError
from schedcpd.hookspecs import PluginContext
from schedcpd.plugin_remote import DEFAULT_USER, RemotePlugin

_LOGGER = logging.getLogger(__name__)

DEFAULT_PLUGINS: dict[str, str] = {"scheduler": "plugins.scheduler.plugin",
                                   "io": "plugins.io.plugin",
                                   "dvfs": "plugins.dvfs.plugin"}
"""Built-in plugin name -> module."""


@dataclass
class PluginRecord:
    """What the host knows about one plugin."""

    name: str
    origin: str
    enabled: bool = True
    error: str | None = None


def _close(plugin: object) -> None:
    """Stop an out-of-process plugin's child (nothing for an in-process plugin)."""
    if isinstance(plugin, RemotePlugin):
        plugin.host_close()


class PluginHost:
    """Owns the pluggy manager and every call into plugin code."""

    def __init__(
        self,
        builtins: dict[str, str] | None = None,
        disabled: list[str] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        load_entry_points: bool = True,
        third_party: dict[str, str] | None = None,
        plugin_user: str = DEFAULT_USER,
    ) -> None:
        self.pm = pluggy.PluginManager(PLUGIN_PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._owners: dict[str, str] = {}  # subsystem -> plugin name, from schedcp_describe
        self._disabled_by_config = set(disabled or ())
        self._on_failure = on_failure
        for name, module in (DEFAULT_PLUGINS if builtins is None else builtins).items():
            self._load(name, f"builtin {module}", partial(importlib.import_module, module))
        # Third-party plugins run out of process, unprivileged (schedcpd.plugin_remote);
        # ``third_party`` names some the same way without installing them (tests).
        found = {ep.name: ep.value for ep in entry_points(group=PLUGIN_ENTRY_POINT_GROUP)} \
            if load_entry_points else {}
        for name, value in {**found, **(third_party or {})}.items():
            self._load(name, f"entry point {value} (out of process, as {plugin_user})",
                       partial(RemotePlugin, name, value, plugin_user))

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
                _close(self.pm.unregister(name=name))
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
            _close(self.pm.unregister(name=name))
        self._owners = {s: n for s, n in self._owners.items() if n != name}
        _LOGGER.debug("%s", "".join(traceback.format_exception(err)))
        self._fail(self.records[name], f"raised in {hook}: {type(err).__name__}: {err}")

    def _callers(self, hook: str, only: str | None = None) -> list[tuple[str, HookCaller]]:
        """(plugin, pluggy caller of ``hook`` on that plugin alone) for each implementer."""
        plugins = list(self.pm.list_name_plugin())
        out = []
        for name in (n for n, _ in plugins if only is None or n == only):
            caller = self.pm.subset_hook_caller(
                hook, remove_plugins=[p for n, p in plugins if n != name])
            if caller.get_hookimpls():
                out.append((name, caller))
        return out

    def _call(self, name: str, hook: str, caller: HookCaller, kwargs: dict[str, Any],
              ) -> tuple[bool, Any]:
        """(answered, result) of one plugin; a fault disables it (answered False)."""
        try:
            result = caller(**kwargs)
        except SchedcpError:
            raise  # a deliberate refusal (NotSupported, Conflict, ...): the caller's answer
        except Exception as err:  # a plugin can fail in any way; isolate it
            self._disable(name, hook, err)
            return False, None
        spec = caller.spec
        if spec is not None and not spec.opts.get("firstresult"):
            result = result[0] if result else None  # pluggy's list of one plugin's answer
        return True, result

    def call_each(self, hook: str, **kwargs: Any) -> dict[str, Any]:
        """Call ``hook`` on every enabled plugin separately; return name -> result.

        A plugin that raises is disabled and left out of the result; the
        other plugins are still called.
        """
        results: dict[str, Any] = {}
        for name, caller in self._callers(hook):
            answered, result = self._call(name, hook, caller, kwargs)
            if answered:
                results[name] = result
        return results

    def owner(self, subsystem: str) -> str | None:
        """The enabled plugin that describes ``subsystem``, if any."""
        if subsystem not in self._owners:
            self.subsystems()
        name = self._owners.get(subsystem)
        return name if name is not None and self.pm.has_plugin(name) else None

    def call_first(self, hook: str, **kwargs: Any) -> Any:
        """Call a routed (``firstresult``) hook; the first non-None answer wins.

        With ``subsystem``, only the plugin that describes it is asked (all
        of them for a subsystem no plugin describes).
        """
        subsystem = kwargs.get("subsystem")
        owner = self.owner(subsystem) if isinstance(subsystem, str) else None
        for name, caller in self._callers(hook, only=owner):
            answered, result = self._call(name, hook, caller, kwargs)
            if answered and result is not None:
                return result
        return None

    def startup(self, context_for: Callable[[str], PluginContext]) -> None:
        """Run every plugin's ``schedcp_startup`` with its own context.

        A plugin that declares knobs (``schedcp_knobs``) gets the core's
        actuator bound to them as ``context.actuator``.
        """
        for name, caller in self._callers("schedcp_startup"):
            try:
                context = context_for(name)
                self._bind_actuator(name, context)
                caller(context=context)
            except Exception as err:  # also a malformed knob declaration
                self._disable(name, "schedcp_startup", err)

    def _bind_actuator(self, name: str, context: PluginContext) -> None:
        if context.actuator is not None or context.journal is None:
            return
        for _, caller in self._callers("schedcp_knobs", only=name):
            answer = caller(config=context.config)
            knobs = answer[0] if answer else None
            if knobs is not None:
                context.actuator = KnobActuator(context.journal, name, knobs)

    def shutdown(self) -> None:
        """Run every plugin's ``schedcp_shutdown``; stop out-of-process plugins' children."""
        self.call_each("schedcp_shutdown")
        for _, plugin in self.pm.list_name_plugin():
            _close(plugin)

    def subsystems(self) -> dict[str, dict[str, Any]]:
        """Subsystem name -> description, from every enabled plugin."""
        out: dict[str, dict[str, Any]] = {}
        for plugin_name, desc in self.call_each("schedcp_describe").items():
            if isinstance(desc, dict) and "name" in desc:
                out[desc["name"]] = {**desc, "plugin": plugin_name}
        self._owners = {name: desc["plugin"] for name, desc in out.items()}
        return out

    def status(self) -> list[dict[str, Any]]:
        """Every known plugin with its origin, state and error."""
        return [r.__dict__.copy() for r in sorted(self.records.values(), key=lambda r: r.name)]
