"""The deployment part of the Manager API: deploy, plan, rollback, holds, verdicts, explain.

Mixed into :class:`schedcpd.manager.Manager`; each method is one declared
API call with its authorization action (see :mod:`schedcpd.api`).
"""

from __future__ import annotations

import re

from schedcpd import verdicts
from schedcpd.api import Caller, api_property, method, to_json
from schedcpd.authz import Authorizer
from schedcpd.const import ACTION_ADMIN, ACTION_DEPLOY, ACTION_OBSERVE
from schedcpd.deployer import Deployer
from schedcpd.errors import InvalidArgument, NotOwner, NotSupported
from schedcpd.explain import Explainer


def _check_id(dep_id: str) -> str:
    if not re.fullmatch(r"dep-[0-9a-f]{12}", dep_id):
        raise InvalidArgument("a deployment id looks like dep-0123456789ab")
    return dep_id


class DeployAPI:
    """Deployment methods; the host sets ``deployer`` and ``authorizer``."""

    deployer: Deployer | None = None
    explainer: Explainer | None = None
    authorizer: Authorizer | None = None
    """Decides who is an admin (may act on others' deployments); None: only root."""

    def _deployer(self) -> Deployer:
        if self.deployer is None:
            raise NotSupported("deployment is not available in this daemon")
        return self.deployer

    async def _check_owner(self, caller: Caller, dep_id: str, what: str) -> str:
        """Return ``dep_id`` if ``caller`` owns it or is an admin; raise NotOwner if not.

        The deploy action lets a caller deploy; acting on a deployment also
        needs it to be the caller's own (the uid that called Deploy), unless
        the caller is root or holds the admin action.
        """
        owner = await self._deployer().owner(_check_id(dep_id))
        if caller.uid in (0, owner):
            return dep_id
        if self.authorizer is not None and await self.authorizer.allows(caller, ACTION_ADMIN):
            return dep_id
        raise NotOwner(f"deployment {dep_id} belongs to uid {owner}: uid {caller.uid} may not "
                       f"{what} it (only its owner or an admin, {ACTION_ADMIN})")

    @api_property(ACTION_OBSERVE, "as")
    def ActivePolicies(self) -> list[str]:
        """``deployment-id:policy-name`` of deployments in canary or active state."""
        if self.deployer is None:
            return []
        return sorted(f"{d}:{n}" for d, n in self.deployer.live.items())

    @method(ACTION_DEPLOY, in_args=(("token", "s"),), out_args=(("deployment_id", "s"),),
            mutating=True)
    async def Deploy(self, caller: Caller, token: str) -> str:
        """Redeem a verifier token and start a canary deployment; returns its id."""
        return await self._deployer().deploy(token, caller.uid)

    @method(ACTION_DEPLOY, in_args=(("token", "s"),), out_args=(("plan", "s"),))
    async def PlanDeployment(self, caller: Caller, token: str) -> str:
        """Advice mode: every value a deployment would write (before/after); writes nothing."""
        return to_json(await self._deployer().plan(token, caller.uid))

    @method(ACTION_DEPLOY, in_args=(("deployment_id", "s"),), out_args=(("result", "s"),),
            mutating=True)
    async def Rollback(self, caller: Caller, deployment_id: str) -> str:
        """Restore what the deployment changed and end it (its owner or an admin)."""
        dep_id = await self._check_owner(caller, deployment_id, "roll back")
        return to_json(await self._deployer().rollback(dep_id, f"rollback by uid {caller.uid}"))

    @method(ACTION_DEPLOY, in_args=(("deployment_id", "s"), ("verdict", "s")),
            out_args=(("recorded", "s"),), mutating=True)
    async def RecordVerdict(self, caller: Caller, deployment_id: str, verdict: str) -> str:
        """Record the owner's verdict (JSON: improved, no-gain or worse) in the policy's history.

        Only the deployment's owner or an admin; once per deployment, after it
        became active.  ``worse`` also records an antipattern for the
        version's profile (:mod:`schedcpd.verdicts`).
        """
        judged = verdicts.parse(verdict)
        dep_id = await self._check_owner(caller, deployment_id, "record a verdict on")
        return to_json(await self._deployer().record_verdict(dep_id, judged, caller.uid))

    @method(ACTION_OBSERVE, in_args=(("deployment_id", "s"),), out_args=(("deployment", "s"),))
    async def GetDeployment(self, caller: Caller, deployment_id: str) -> str:
        """One deployment with its state, targets, trip and every transition."""
        return to_json(await self._deployer().get(_check_id(deployment_id)))

    @method(ACTION_OBSERVE, out_args=(("deployments", "s"),))
    async def ListDeployments(self, caller: Caller) -> str:
        """The newest deployments (at most 100), newest first."""
        return to_json(await self._deployer().deployments())

    @method(ACTION_OBSERVE, in_args=(("subject", "s"),), out_args=(("explanation", "s"),))
    async def Explain(self, caller: Caller, subject: str) -> str:
        """Why a process (decimal pid) or a deployment (id) has its values: the evidence chain."""
        if self.explainer is None:
            raise NotSupported("explanations are not available in this daemon")
        return to_json(await self.explainer.explain(subject))

    @method(ACTION_DEPLOY, in_args=(("deployment_id", "s"),), mutating=True)
    async def HoldDeployment(self, caller: Caller, deployment_id: str) -> None:
        """Tie a running deployment to this connection: it is rolled back when it closes."""
        dep_id = await self._check_owner(caller, deployment_id, "hold")
        self._deployer().hold(dep_id, caller.sender)

    @method(ACTION_DEPLOY, in_args=(("deployment_id", "s"),), mutating=True)
    async def ReleaseHold(self, caller: Caller, deployment_id: str) -> None:
        """Release this connection's hold: the deployment stays when the client leaves."""
        dep_id = await self._check_owner(caller, deployment_id, "release")
        self._deployer().release(dep_id, caller.sender)
