"""Run by tests/io/test_crash.py: apply an io policy in this process, to be killed midway.

argv: journal path, state dir, policy JSON.  SCHEDCP_FAULT (set by the test)
SIGKILLs this process inside the actuator's write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from plugins.io.plugin import IoPlugin
from schedcpd.plugin_api import Journal, PluginContext

if __name__ == "__main__":
    plugin = IoPlugin()
    plugin.schedcp_startup(PluginContext(state_dir=Path(sys.argv[2]),
                                         journal=Journal(Path(sys.argv[1]))))
    plugin.schedcp_apply("io", json.loads(sys.argv[3]), {"owner": "crashed"}, False)
    print("applied without a fault", flush=True)
