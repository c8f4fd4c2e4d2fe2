"""Run by tests/dvfs/test_crash.py: apply a dvfs policy on a FAKE tree, to be killed midway.

argv: journal path, state dir, FAKE sysfs root, policy JSON.  SCHEDCP_FAULT (set by the
test) SIGKILLs this process inside the actuator's write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from plugins.dvfs.plugin import DvfsPlugin
from schedcpd.plugin_api import Journal, PluginContext

if __name__ == "__main__":
    plugin = DvfsPlugin()
    plugin.schedcp_startup(PluginContext(state_dir=Path(sys.argv[2]),
                                         journal=Journal(Path(sys.argv[1])),
                                         config={"sysfs_cpu": sys.argv[3]}))
    plugin.schedcp_apply("dvfs", json.loads(sys.argv[4]), {"owner": "crashed"}, False)
    print("applied without a fault", flush=True)
