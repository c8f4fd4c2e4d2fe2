"""Ansible module schedcp.fleet.rollback: roll a schedcp deployment back on this host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rollback
short_description: Roll a schedcp deployment back on this host
description:
  - Calls C(Rollback) on schedcpd on the host the task runs on; the
    deployment stops and the daemon restores every value it changed from its
    journal.
  - A deployment that is already over (C(reverted) by its breaker or by an
    earlier rollback, or C(failed)) is left as it is, with C(changed=false).
  - Needs schedcp installed for the Python the module runs with.
version_added: 0.1.0
options:
  deployment_id:
    description:
      - The deployment's id on this host
        (RV(schedcp.fleet.deploy_bundle#module:deployment_id)).
    type: str
    required: true
  bus_address:
    description: C(system), C(session) or a D-Bus address such as C(unix:path=/run/dbus/x).
    type: str
    default: system
author: schedcp developers
"""

EXAMPLES = r"""
- name: Roll the deployment back
  schedcp.fleet.rollback:
    deployment_id: "{{ deployed.deployment_id }}"
"""

RETURN = r"""
deployment_id:
  description: The deployment's id.
  returned: always
  type: str
state:
  description: The deployment's state afterwards (C(reverted) or C(failed)).
  returned: success
  type: str
reason:
  description: The reason of its last transition.
  returned: success
  type: str
restore:
  description: What the rollback restored (C(summary) counts by outcome, C(entries)).
  returned: changed
  type: dict
error:
  description: The D-Bus error name when the daemon refused the call.
  returned: on a refusal
  type: str"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.schedcp.fleet.plugins.module_utils.schedcpd import (
    BUS_ARGUMENT,
    ERR,
    CallFailed,
    DaemonError,
    missing_client,
    run,
)


def rollback(bus_address: str, dep_id: str) -> dict[str, Any]:
    """Roll ``dep_id`` back unless it is over already; the task's result."""
    async def work(client: Any) -> dict[str, Any]:
        try:
            done = await client.call_json("Rollback", "s", dep_id)
            changed, restore = True, done.get("restore") or {}
        except CallFailed as err:
            if err.name != ERR + "Conflict":  # Conflict: the deployment is over already
                raise
            changed, restore = False, {}
        dep = await client.call_json("GetDeployment", "s", dep_id)
        return {"changed": changed, "deployment_id": dep_id, "state": dep["state"],
                "reason": dep.get("reason", ""), "restore": restore}

    return run(bus_address, work)


def main() -> None:
    """Ansible's entry point."""
    module = AnsibleModule(
        argument_spec={"deployment_id": {"type": "str", "required": True},
                       "bus_address": BUS_ARGUMENT},
        supports_check_mode=False,
    )
    problem = missing_client()
    if problem:
        module.fail_json(msg=problem)
    try:
        result = rollback(module.params["bus_address"], module.params["deployment_id"])
    except DaemonError as err:
        module.fail_json(msg=str(err), error=err.name, changed=False,
                         deployment_id=module.params["deployment_id"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
