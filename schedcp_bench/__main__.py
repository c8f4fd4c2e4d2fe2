"""``python -m schedcp_bench`` runs the ``schedcp-bench`` command line."""

import sys

from schedcp_bench.cli import main

sys.exit(main())
