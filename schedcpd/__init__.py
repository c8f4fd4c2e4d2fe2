"""schedcpd: the control plane that lets AI agents tune Linux CPU scheduling safely."""

from __future__ import annotations

__version__ = "0.1.0"
