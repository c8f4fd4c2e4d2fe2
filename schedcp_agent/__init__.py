"""schedcp-agent: the unprivileged sched-agent that tunes scheduling through schedcpd.

Four roles with separate contexts and plain hand-offs — observation
(:mod:`~schedcp_agent.observe`), planning (:mod:`~schedcp_agent.plan` with the
:mod:`~schedcp_agent.offline` or :mod:`~schedcp_agent.claude` backend),
execution (:mod:`~schedcp_agent.execute`) and learning
(:mod:`~schedcp_agent.learn`) — talking to the daemon only over D-Bus
(:mod:`~schedcp_agent.client`, tools declared once in :mod:`~schedcp_agent.tools`).
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
