"""Prometheus metrics of the daemon and their HTTP exporter.

Exported on 127.0.0.1:9638 by default (``[metrics]`` in schedcpd.toml).
Each daemon owns its own registry so tests can run several side by side.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from schedcpd import __version__
from schedcpd.metrics_safety import SafetyMetrics, StateCollector

_LOGGER = logging.getLogger(__name__)

# Read-only D-Bus calls take tens of microseconds; deploy-like calls seconds.
_LATENCY_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1.0, 10.0,
)


class Metrics:
    """The daemon's metric families, on a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("schedcp_build", "schedcpd build information", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.calls = Counter(
            "schedcp_dbus_calls", "D-Bus method calls handled", ["method"], registry=r
        )
        self.errors = Counter(
            "schedcp_dbus_errors", "D-Bus method calls answered with an error",
            ["method", "error"], registry=r,
        )
        self.latency = Histogram(
            "schedcp_dbus_call_seconds", "Time from receiving a call to sending its reply",
            ["method"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inflight = Gauge(
            "schedcp_dbus_calls_in_flight", "D-Bus calls being handled now", registry=r
        )
        self.plugin_failures = Counter(
            "schedcp_plugin_failures", "Plugins disabled after an error", ["plugin"], registry=r
        )
        self.plugins_enabled = Gauge(
            "schedcp_plugins_enabled", "Plugins currently enabled", registry=r
        )
        self.config_reloads = Counter(
            "schedcp_config_reloads", "Configuration reloads", ["result"], registry=r
        )
        self.loop_stalls = Counter(
            "schedcp_event_loop_stalls", "Times the event loop did not run for longer than "
            "the stall threshold (D-Bus calls and watchdog pings waited)", registry=r,
        )
        self.loop_stall_longest = Gauge(
            "schedcp_event_loop_stall_longest_seconds",
            "The longest event-loop stall that has ended", registry=r,
        )
        self.safety = SafetyMetrics(r)
        """The safety chain's event counters (the engine's :class:`SafetyEvents`)."""
        self.state = StateCollector()
        """Deployments and journal entries, read at each scrape."""
        r.register(self.state)
        self._server: Any = None

    def serve(self, address: str, port: int) -> None:
        """Start the HTTP exporter on a background thread."""
        server, thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = (server, thread)
        _LOGGER.info("metrics exported on http://%s:%d/metrics", address, server.server_port)

    @property
    def port(self) -> int | None:
        """The port the exporter listens on (useful when configured as 0)."""
        return self._server[0].server_port if self._server else None

    def stop(self) -> None:
        """Stop the exporter, if running."""
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
