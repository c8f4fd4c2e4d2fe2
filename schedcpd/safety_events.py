"""Events of the safety chain, as the engine reports them to whoever counts them.

The verifier, the token authority, the deployer and the journal tell an
object with this interface when something happens (a token issued, a
breaker trip, a restore and how long it took).  The daemon gives them its
Prometheus metrics (:class:`schedcpd.metrics_safety.SafetyMetrics`); without
one they get :data:`NO_EVENTS`, which does nothing, so the engine runs and is
tested without any metrics library.

Labels passed here must stay few: a subsystem name, a guard name, a named
error, a stage name; never a policy or deployment id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

# Why a deployment's values were restored (the ``cause`` of :meth:`SafetyEvents.rolled_back`).
CAUSES = ("breaker", "requested", "holder_gone", "targets_exited", "error", "restart")


class SafetyEvents(Protocol):
    """What the safety chain reports; every method must be cheap and must not raise."""

    def token_issued(self, subsystem: str) -> None:
        """The verifier signed a deployment token."""

    def token_redeemed(self, subsystem: str) -> None:
        """``Deploy`` accepted a token and consumed its nonce."""

    def token_refused(self, reason: str) -> None:
        """``Deploy`` refused a token; ``reason`` is the named error (``TokenExpired``...)."""

    def verification(self, subsystem: str, result: str,
                     stages: Sequence[dict[str, Any]]) -> None:
        """A verification ended: ``passed``, ``failed`` or ``error`` (no report).

        ``stages`` are the report's stage results (``stage``, ``verdict``,
        ``seconds``); empty for ``error``.
        """

    def breaker_trip(self, subsystem: str, reason: str) -> None:
        """The circuit breaker tripped; ``reason`` is the guard (``wait_per_run_us``...)."""

    def rolled_back(self, subsystem: str, cause: str, seconds: float | None) -> None:
        """A deployment's values were restored, for ``cause`` (one of :data:`CAUSES`).

        ``seconds``: how long the restore took, None when it was not timed
        here (at start-up the journal restored everything before the
        deployer ran).
        """

    def override_detected(self, subsystem: str) -> None:
        """Someone else changed a value we wrote; we stopped managing it."""


class NoEvents:
    """The :class:`SafetyEvents` that ignores everything (no metrics)."""

    def token_issued(self, subsystem: str) -> None:
        """Ignored."""

    def token_redeemed(self, subsystem: str) -> None:
        """Ignored."""

    def token_refused(self, reason: str) -> None:
        """Ignored."""

    def verification(self, subsystem: str, result: str,
                     stages: Sequence[dict[str, Any]]) -> None:
        """Ignored."""

    def breaker_trip(self, subsystem: str, reason: str) -> None:
        """Ignored."""

    def rolled_back(self, subsystem: str, cause: str, seconds: float | None) -> None:
        """Ignored."""

    def override_detected(self, subsystem: str) -> None:
        """Ignored."""


NO_EVENTS: SafetyEvents = NoEvents()
