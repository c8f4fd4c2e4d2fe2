"""schedcpd: the daemon process — start-up, reload, shutdown.

``schedcpd --config PATH --bus system|session|ADDRESS --state-dir DIR``

Start-up order: configuration, state database, plugins (and the restore of
anything a crashed predecessor left applied), bus connection, API export,
then the bus name — owning it is what makes the daemon visible, so READY=1
follows it.  SIGHUP, ``Reload()`` and an edit of the configuration file
reload it; SIGTERM/SIGINT restore every managed value and stop cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import fcntl
import logging
import os
import pwd
import signal
import sys
from pathlib import Path
from typing import Any

from dbus_fast import NameFlag, RequestNameReply

from schedcpd import __version__, config
from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.api import Caller
from schedcpd.audit import AuditLog
from schedcpd.authz import Authorizer
from schedcpd.breaker import BreakerSettings
from schedcpd.const import BUS_NAME, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR
from schedcpd.dbus.bus import bus_from_spec
from schedcpd.dbus.identity import CallerResolver
from schedcpd.dbus.polkit import PolkitClient
from schedcpd.dbus.service import ManagerService
from schedcpd.deployer import Deployer, DeployerSettings
from schedcpd.errors import ConfigError
from schedcpd.explain import Explainer
from schedcpd.hookspecs import PluginContext
from schedcpd.journal import Journal
from schedcpd.loop_monitor import DEFAULT_THRESHOLD, LoopMonitor
from schedcpd.manager import Manager
from schedcpd.metrics import Metrics
from schedcpd.notify import Notifier
from schedcpd.plugins import PluginHost
from schedcpd.probes import ProbeManager
from schedcpd.ranges import RangeCache
from schedcpd.reports import ReportStore
from schedcpd.repository import Repository, load_directory
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import KeyStore, TokenAuthority
from schedcpd.verifier import Verifier
from schedcpd.watch import PathWatcher

_LOGGER = logging.getLogger("schedcpd")
# Crash-test hooks: the deployer's and the scheduler actuator's kill points.
_FAULT_ENV = ("SCHEDCP_FAULT_AT", "SCHEDCP_FAULT")


def _gate_fault_injection(enabled: bool) -> None:
    """Drop the fault-injection variables unless ``[debug] fault_injection`` allows them.

    Every kill point (deployer, actuator, T2 loader) reads the environment of
    this process: removed here, none can fire in a production configuration.
    """
    if enabled:
        _LOGGER.warning("fault injection is enabled ([debug] fault_injection): test use only")
        return
    for name in _FAULT_ENV:
        if name in os.environ:
            _LOGGER.warning("%s=%s ignored: [debug] fault_injection is off", name,
                            os.environ.pop(name))

EXIT_CONFIG = 2
EXIT_BUS = 3
EXIT_NAME_TAKEN = 4


class StartupError(Exception):
    """Start-up cannot continue; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Daemon:
    """One running schedcpd."""

    def __init__(self, cfg: config.Config, bus_spec: str, state_dir: Path) -> None:
        self.config = cfg
        _gate_fault_injection(cfg["debug"]["fault_injection"])
        self.bus_spec = bus_spec
        self.state_dir = state_dir
        self.notifier = Notifier()
        self.loop_monitor: LoopMonitor | None = None
        self.metrics = Metrics()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # -- lifecycle ------------------------------------------------------

    async def run(self) -> int:
        """Run until asked to stop; return the exit status."""
        loop = asyncio.get_running_loop()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # One daemon per state directory: start-up restores every journaled
        # value (crash recovery), which must never undo a running daemon's work.
        lock = os.open(self.state_dir / "schedcpd.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise StartupError(f"another schedcpd is using {self.state_dir}",
                               EXIT_NAME_TAKEN) from None
        self.store = StateStore(self.state_dir / "schedcpd.db", MIGRATIONS)
        # The one save-before-write journal every plugin's kernel writes go through.
        self.journal = Journal(self.state_dir / "journal.db")
        self.journal.events = self.metrics.safety
        self.metrics.state.bind(self.store, self.journal)
        try:
            return await self._run(loop)
        finally:
            self.metrics.state.unbind()
            self.journal.close()
            self.store.close()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> int:
        # A stop asked for during start-up (systemd may send SIGTERM at any
        # time) is honoured when start-up is done, before the name is requested,
        # and restores like any stop: the handlers go in before anything is
        # applied, not after the name is owned (a client that saw the name and
        # sent SIGTERM at once killed the daemon outright).
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._request_stop, "SIGINT")
        audit = AuditLog(self.store)
        self.plugins = PluginHost(
            disabled=self.config["plugins"]["disabled"], on_failure=self._plugin_failed,
            plugin_user=self.config["plugins"]["user"],
        )
        self.plugins.startup(self._plugin_context)
        self._restore_all("start-up (restoring anything a previous run left applied)")
        self.manager = Manager(self.plugins, audit, self._status_extras, self.reload)
        self.metrics.plugins_enabled.set(sum(r.enabled for r in self.plugins.records.values()))
        subsystems = set(self.plugins.subsystems())
        self.metrics.safety.declare(subsystems)
        self.metrics.state.subsystems = subsystems
        await self._start_policies()

        self.bus = bus_from_spec(self.bus_spec)
        try:
            await self.bus.connect()
        except Exception as err:
            raise StartupError(f"cannot connect to the {self.bus_spec} bus: {err}", EXIT_BUS) \
                from err
        resolver = CallerResolver(self.bus)
        await resolver.start()
        polkit = PolkitClient(self.bus, resolver)
        await polkit.start()
        self.authorizer = Authorizer(self.config["authorization"], polkit)
        self.manager.authorizer = self.authorizer
        self.service = ManagerService(
            self.bus, self.manager, resolver, self.authorizer, self.metrics, audit,
            self.config["bus"],
        )
        self.service.export()
        self.manager.emitter = self.service
        resolver.on_gone(self._client_gone)
        await self._start_deployer()
        await self._start_analysis()

        # Watch the files before owning the name: once clients can see the
        # daemon, an edit of its configuration must not go unnoticed.
        watcher = PathWatcher.for_file(self.config.path, loop,
                                       lambda: self._reload_logged("file change"))
        watcher.start()
        dropins = PathWatcher(self.dropin_dir, lambda p: p.endswith(".toml"), loop,
                              self._dropins_changed)
        dropins.start()
        try:
            if self.config["metrics"]["enabled"]:
                self._serve_metrics()
            if self._stop.is_set():
                return self._exit_code  # stopped during start-up: never owned the name
            reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise StartupError(f"{BUS_NAME} is already owned (another schedcpd?)",
                                   EXIT_NAME_TAKEN)
            loop.add_signal_handler(signal.SIGHUP, self._reload_logged, "SIGHUP")
            self._tasks.append(loop.create_task(self.notifier.watchdog()))
            self._monitor_loop(loop)
            self._tasks.append(loop.create_task(self._watch_bus()))
            self.notifier.send(READY=1, MAINPID=os.getpid())
            self.notifier.status(
                f"schedcpd {__version__} serving {BUS_NAME} on the {self.bus_spec} bus; "
                f"subsystems: {', '.join(self.manager.Subsystems()) or 'none'}; "
                f"authorization by {self.authorizer.mode()}"
            )
            await self._stop.wait()
        finally:
            watcher.stop()
            dropins.stop()
            await self._shutdown()
        return self._exit_code

    _exit_code = 0

    def _monitor_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Log stalls of the loop (with where it is stuck), well before systemd's watchdog."""
        interval = self.notifier.watchdog_interval()  # half of WatchdogSec
        threshold = min(DEFAULT_THRESHOLD, interval / 2) if interval else DEFAULT_THRESHOLD
        self.loop_monitor = LoopMonitor(loop, threshold, on_stall=self.metrics.loop_stalls.inc)
        monitor = self.loop_monitor
        self.metrics.loop_stall_longest.set_function(lambda: monitor.longest)
        monitor.start()

    def _serve_metrics(self) -> None:
        """Start the exporter before the name is owned: a port in use is a config error."""
        address, port = self.config["metrics"]["address"], self.config["metrics"]["port"]
        try:
            self.metrics.serve(address, port)
        except OSError as err:
            raise StartupError(
                f"{self.config.path or '<defaults>'}: metrics.address = {address!r}, "
                f"metrics.port = {port}: cannot serve metrics there ({err.strerror or err}); "
                f"choose another port or set metrics.enabled = false", EXIT_CONFIG) from err

    async def _watch_bus(self) -> None:
        await self.bus.wait_for_disconnect()
        if not self._stop.is_set():
            _LOGGER.error("lost the bus connection; stopping")
            self._exit_code = EXIT_BUS
            self._stop.set()

    def _request_stop(self, why: str) -> None:
        _LOGGER.info("%s received; stopping", why)
        self._stop.set()

    async def _shutdown(self) -> None:
        self.notifier.send(STOPPING=1)
        if self.loop_monitor is not None:
            self.loop_monitor.stop()
        self.notifier.status("stopping: restoring managed state")
        for task in self._tasks:
            task.cancel()
        await self.service.close()
        if self.manager.probes is not None:
            await self.manager.probes.close()
        if self.manager.analyzer is not None:
            await self.manager.analyzer.stop()
        if self.manager.deployer is not None:
            await self.manager.deployer.close()
        self._restore_all("stop")
        self.plugins.shutdown()
        self.bus.disconnect()
        self.metrics.stop()
        _LOGGER.info("stopped")

    def _restore_all(self, why: str) -> None:
        for name in self.plugins.subsystems():
            report = self.plugins.call_first("schedcp_restore", subsystem=name, scope={})
            if report:
                _LOGGER.info("restored %s at %s: %s", name, why, report)

    # -- policies -------------------------------------------------------

    async def _start_policies(self) -> None:
        """Keys, tokens, repository (built-ins and drop-ins) and the verifier."""
        settings = self.config["repository"]
        verifier_settings = self.config["verifier"]
        trusted = verifier_settings["trusted_keys_dir"]
        revoked = verifier_settings["revoked_keys_file"]
        keys = KeyStore(self.state_dir / "keys", verifier_settings["token_lifetime_seconds"],
                        trusted_dir=Path(trusted) if trusted else None,
                        revoked_file=Path(revoked) if revoked else None)
        tokens = TokenAuthority(keys, self.store)
        tokens.events = self.metrics.safety
        repo = Repository(self.store, self._validate_policy, settings["default_subsystem"])
        self.policy_errors: dict[str, str] = {}
        builtin = settings["builtin_dir"]
        self.builtin_dir = (_default_builtin_dir() if builtin == "auto" else Path(builtin))
        self.dropin_dir = Path(settings["dropin_dir"])
        loaded = await load_directory(repo, self.builtin_dir, "builtin", self.policy_errors,
                                      recursive=True)
        loaded += await load_directory(repo, self.dropin_dir, "user", self.policy_errors)
        _LOGGER.info("%d policies loaded from %s and %s; %d rejected", len(loaded),
                     self.builtin_dir, self.dropin_dir, len(self.policy_errors))
        self.manager.repository = repo
        self.manager.tokens = tokens
        self.manager.verifier = Verifier(self.plugins, repo, tokens,
                                         dynamic_seconds=verifier_settings["dynamic_seconds"],
                                         reports=ReportStore(self.store),
                                         ranges=RangeCache(
                                             verifier_settings["range_lifetime_seconds"])
                                         if verifier_settings["range_verification"] else None)
        self.manager.verifier.events = self.metrics.safety
        try:
            self.manager.agent_uids = frozenset({pwd.getpwnam(settings["agent_user"]).pw_uid})
        except KeyError:
            self.manager.agent_uids = frozenset()

    async def _start_deployer(self) -> None:
        assert self.manager.repository is not None and self.manager.tokens is not None
        d, b = self.config["deployer"], self.config["breaker"]
        deployer = Deployer(
            self.store, self.plugins, self.manager.repository, self.manager.tokens,
            DeployerSettings(**d, fault_injection=self.config["debug"]["fault_injection"]),
            BreakerSettings(**b),
            emit=lambda dep, state, reason: self.service.emit(
                "DeploymentChanged", dep, state, reason),
        )
        deployer.on_live_change = lambda: self.service.properties_changed(["ActivePolicies"])
        deployer.events = self.metrics.safety
        recovered = await deployer.recover()
        if recovered:
            _LOGGER.warning("%d deployment(s) were in flight when the daemon stopped; marked "
                            "reverted", recovered)
        self.manager.deployer = deployer
        verifier = self.manager.verifier
        self.manager.explainer = Explainer(
            self.journal, self.plugins, deployer, self.manager.repository, self.store,
            verifier.reports if verifier is not None else None)

    async def _start_analysis(self) -> None:
        a, p = self.config["analysis"], self.config["probes"]
        self.manager.analyzer = WorkloadAnalyzer(
            rate_hz=a["rate_hz"], window_s=a["window_seconds"], top_n=a["top_n"],
            registry=self.metrics.registry, perf_max_seconds=a["perf_max_seconds"])
        await self.manager.analyzer.start()
        self.manager.probes = ProbeManager(
            bpf_dir=None if p["bpf_dir"] == "auto" else Path(p["bpf_dir"]),
            max_concurrent=p["max_concurrent"], max_seconds=p["max_seconds"],
            per_caller_per_minute=p["per_caller_per_minute"])
        if self.manager.deployer is not None:
            self.manager.deployer.on_targets = self.manager.analyzer.watch

    def _client_gone(self, sender: str) -> None:
        if self.manager.deployer is not None:
            self.manager.deployer.client_gone(sender)
        if self.manager.probes is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(
                self.manager.probes.cancel_caller(sender)))

    def _validate_policy(self, subsystem: str, doc: dict[str, Any]) -> Any:
        return self.plugins.call_first("schedcp_validate", subsystem=subsystem, policy=doc)

    def _dropins_changed(self) -> None:
        repo = self.manager.repository
        assert repo is not None
        task = asyncio.get_running_loop().create_task(
            load_directory(repo, self.dropin_dir, "user", self.policy_errors))
        self._tasks.append(task)

    # -- plugins --------------------------------------------------------

    def _plugin_context(self, name: str) -> PluginContext:
        plugin_dir = self.state_dir / "plugins" / name
        plugin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return PluginContext(state_dir=plugin_dir, config=self.config.plugin(name),
                             journal=self.journal)

    def _plugin_failed(self, name: str, message: str) -> None:
        self.metrics.plugin_failures.labels(name).inc()
        self.metrics.plugins_enabled.set(sum(r.enabled for r in self.plugins.records.values())
                                         if hasattr(self, "plugins") else 0)
        if hasattr(self, "manager"):
            self.manager.refresh_subsystems()

    def _status_extras(self, caller: Caller) -> dict[str, Any]:
        return {
            "bus": self.bus_spec,
            "authorization": self.authorizer.mode(),
            "access": self.authorizer.access(caller),
            "config_file": str(self.config.path) if self.config.path else None,
            "state_dir": str(self.state_dir),
            "policy_files": {"builtin": str(self.builtin_dir), "dropin": str(self.dropin_dir),
                             "rejected": self.policy_errors},
            "metrics": (
                {"address": self.config["metrics"]["address"], "port": self.metrics.port}
                if self.metrics.port else None
            ),
        }

    # -- reload ---------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration file and apply what can change live.

        Raises :class:`ConfigError` (the old configuration stays) on a bad file.
        """
        try:
            new = config.load(self.config.path)
        except ConfigError:
            self.metrics.config_reloads.labels("error").inc()
            raise
        old = self.config.as_dict()
        changed = [
            f"{section}.{key}" for section, values in new.as_dict().items()
            for key, value in values.items() if old[section][key] != value
        ]
        live = {"daemon", "authorization", "bus"}
        restart = [k for k in changed if k.split(".")[0] not in live]
        self.config = new
        logging.getLogger().setLevel(new["daemon"]["log_level"].upper())
        self.authorizer.reconfigure(new["authorization"])
        self.service.reconfigure(new["bus"])
        self.manager.refresh_subsystems()  # a plugin may describe itself anew
        self.metrics.config_reloads.labels("ok").inc()
        _LOGGER.info("configuration reloaded from %s; changed: %s%s", new.path,
                     ", ".join(changed) or "nothing",
                     f"; these take effect at restart: {', '.join(restart)}" if restart else "")
        return {"changed": changed, "restart_required": restart}

    def _reload_logged(self, why: str) -> None:
        _LOGGER.info("reloading configuration (%s)", why)
        try:
            self.reload()
        except ConfigError as err:
            _LOGGER.error("reload failed, keeping the previous configuration: %s", err)


def _default_builtin_dir() -> Path:
    """policies/ of a source checkout, else the installed location.

    A pip install (wheel or checkout) puts them in
    ``<prefix>/share/schedcp/policies``; the Debian package in
    ``/usr/share/schedcp/policies``.
    """
    candidates = (Path(__file__).resolve().parents[1] / "policies",
                  Path(sys.prefix) / "share" / "schedcp" / "policies")
    return next((c for c in candidates if c.is_dir()), Path("/usr/share/schedcp/policies"))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="schedcpd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--bus", default="system",
                        help="system, session, or a D-Bus address (default system)")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, type=Path,
                        help=f"state directory (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--version", action="version", version=f"schedcpd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``schedcpd`` command."""
    args = _parse_args(argv)
    # Under systemd the journal adds timestamps; by hand we add them.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    # A fatal signal (systemd's watchdog sends SIGABRT) prints every thread's
    # stack to stderr, the journal: where the daemon was when it was killed.
    faulthandler.enable(all_threads=True)
    try:
        cfg = config.load(args.config)
    except ConfigError as err:
        print(f"schedcpd: {err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    logging.getLogger().setLevel(cfg["daemon"]["log_level"].upper())
    try:
        code = asyncio.run(Daemon(cfg, args.bus, args.state_dir).run())
    except StartupError as err:
        print(f"schedcpd: {err}", file=sys.stderr)
        sys.exit(err.code)
    sys.exit(code)
