"""Ansible module schedcp.fleet.deploy_bundle: import a bundle, deploy it, await the breaker."""

from __future__ import annotations

DOCUMENTATION = r"""
module: deploy_bundle
short_description: Deploy a schedcp policy bundle on this host and wait for the breaker's verdict
description:
  - Imports a signed policy bundle into schedcpd on the host the task runs on
    (C(ImportBundle), which checks the signing key, the signature, the expiry
    and the digests), deploys it with the bundle's token (C(Deploy)) and
    waits until the deployment is C(active).
  - The task fails when the deployment is C(reverted) or C(failed) (the
    circuit breaker tripped; the reason and the trip are in the result),
    when it is still running after O(timeout) seconds, and when the daemon
    refuses the bundle or the token (the D-Bus error name is in RV(error)).
  - Re-running on a host that already redeemed the bundle's token reports
    that deployment without deploying again (C(changed=false)).
  - Needs schedcp installed for the Python the module runs with.
version_added: 0.1.0
options:
  bundle:
    description:
      - The bundle's text (C(schedcpctl bundle export)).
      - It holds a token, so it is not logged.
    type: str
    required: true
  bus_address:
    description: C(system), C(session) or a D-Bus address such as C(unix:path=/run/dbus/x).
    type: str
    default: system
  timeout:
    description: Seconds to wait for the deployment to settle (canary and probation).
    type: float
    default: 600
author: schedcp developers
"""

EXAMPLES = r"""
- name: Deploy the bundle and wait for its canary and probation
  schedcp.fleet.deploy_bundle:
    bundle: "{{ lookup('ansible.builtin.file', 'web-latency.bundle') }}"
  register: deployed
"""

RETURN = r"""
deployment_id:
  description: The deployment's id on this host.
  returned: when deployed
  type: str
state:
  description: C(active), C(reverted), C(failed) or the state at the timeout.
  returned: when deployed
  type: str
reason:
  description: The reason of the last transition (the breaker's, when it tripped).
  returned: when deployed
  type: str
breaker_tripped:
  description: Whether the circuit breaker reverted the deployment.
  returned: when deployed
  type: bool
trip:
  description: The guard, baseline, observed value and ratio of the trip.
  returned: when deployed
  type: dict
events:
  description: Every transition with its reason.
  returned: when deployed
  type: list
policy_id:
  description: The policy version (SHA-256 of its text).
  returned: when imported
  type: str
policy_name:
  description: The policy's name.
  returned: when imported
  type: str
kid:
  description: The id of the key that signed the bundle.
  returned: when imported
  type: str
error:
  description: The D-Bus error name when the daemon refused a call.
  returned: on a refusal
  type: str"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.schedcp.fleet.plugins.module_utils.schedcpd import (
    BUS_ARGUMENT,
    ERR,
    CallFailed,
    DaemonError,
    deployment_of_token,
    missing_client,
    run,
    summary,
    wait_settled,
)


def deploy(bus_address: str, bundle: str, timeout: float) -> dict[str, Any]:
    """Import, deploy and wait; the task's result (``failed`` set when it must fail)."""
    async def work(client: Any) -> dict[str, Any]:
        imported = await client.call_json("ImportBundle", "s", bundle)
        result: dict[str, Any] = {"policy_id": imported["policy_id"],
                                  "policy_name": imported["name"], "kid": imported["kid"]}
        try:
            dep_id = await client.call("Deploy", "s", imported["token"])
            result["changed"] = True
        except CallFailed as err:
            if err.name != ERR + "TokenReplayed":
                raise
            before = await deployment_of_token(client, imported["token"], imported["policy_id"])
            if before is None:
                raise
            dep_id, result["changed"] = before["id"], False
        dep = await wait_settled(client, dep_id, timeout)
        result.update(summary(dep))
        return result

    result = run(bus_address, work)
    state = result["state"]
    if state == "active":
        return result
    if state in ("reverted", "failed"):
        why = "the circuit breaker tripped" if result["breaker_tripped"] else state
        result["msg"] = (f"deployment {result['deployment_id']} of {result['policy_name']} "
                         f"was {state} ({why}): {result['reason']}")
    else:
        result["msg"] = (f"deployment {result['deployment_id']} still {state} after "
                         f"{timeout:g} s; it goes on (schedcp.fleet.rollback stops it)")
    result["failed"] = True
    return result


def main() -> None:
    """Ansible's entry point."""
    module = AnsibleModule(
        argument_spec={"bundle": {"type": "str", "required": True, "no_log": True},
                       "bus_address": BUS_ARGUMENT,
                       "timeout": {"type": "float", "default": 600.0}},
        supports_check_mode=False,
    )
    problem = missing_client()
    if problem:
        module.fail_json(msg=problem)
    params = module.params
    try:
        result = deploy(params["bus_address"], params["bundle"], params["timeout"])
    except DaemonError as err:
        module.fail_json(msg=str(err), error=err.name, changed=False)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
