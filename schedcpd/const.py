"""Every externally visible name, derived from one versioned root.

Bus names, object paths, interface names, error names and authorization
actions are part of the public API: change them only with a new major
version (``Control2``).
"""

from __future__ import annotations

API_VERSION = 1

BUS_NAME = f"org.schedcp.Control{API_VERSION}"
OBJECT_PATH = f"/org/schedcp/Control{API_VERSION}"
MANAGER_INTERFACE = f"{BUS_NAME}.Manager"
ERROR_PREFIX = f"{BUS_NAME}.Error"

# Authorization actions, ordered from least to most privileged.  They are
# also the polkit action ids shipped in etc/polkit-1/actions/.
ACTION_OBSERVE = "org.schedcp.observe"
ACTION_SUBMIT = "org.schedcp.submit"
ACTION_VERIFY = "org.schedcp.verify"
ACTION_DEPLOY = "org.schedcp.deploy"
ACTION_ADMIN = "org.schedcp.admin"
ACTIONS = (ACTION_OBSERVE, ACTION_SUBMIT, ACTION_VERIFY, ACTION_DEPLOY, ACTION_ADMIN)

DEFAULT_CONFIG_PATH = "/etc/schedcp/schedcpd.toml"
DEFAULT_STATE_DIR = "/var/lib/schedcp"
DEFAULT_RUNTIME_DIR = "/run/schedcp"
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
DEFAULT_METRICS_PORT = 9638

PLUGIN_ENTRY_POINT_GROUP = "schedcp.plugins"
PLUGIN_PROJECT = "schedcp"
AGENT_PLUGIN_PROJECT = "schedcp_agent"
