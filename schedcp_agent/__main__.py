"""``python -m schedcp_agent`` runs the command line."""

from __future__ import annotations

import sys

from schedcp_agent.cli import main

sys.exit(main())
