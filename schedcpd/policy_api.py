"""The policy part of the Manager API: repository, verifier, tokens.

Mixed into :class:`schedcpd.manager.Manager`; each method is one declared
API call with its authorization action (see :mod:`schedcpd.api`).
"""

from __future__ import annotations

from typing import Any

from schedcpd.api import Caller, method, to_json
from schedcpd.const import (
    ACTION_ADMIN,
    ACTION_OBSERVE,
    ACTION_SUBMIT,
    ACTION_VERIFY,
)
from schedcpd.errors import NotFound, NotSupported
from schedcpd.repository import Repository
from schedcpd.tokens import TokenAuthority
from schedcpd.verifier import Verifier


class PolicyAPI:
    """Policy methods; the host sets ``repository``, ``verifier`` and ``tokens``."""

    repository: Repository | None = None
    verifier: Verifier | None = None
    tokens: TokenAuthority | None = None
    agent_uids: frozenset[int] = frozenset()

    def _repo(self) -> Repository:
        if self.repository is None:
            raise NotSupported("the policy repository is not available in this daemon")
        return self.repository

    @method(ACTION_OBSERVE, in_args=(("query", "s"),), out_args=(("policies", "s"),))
    async def ListPolicies(self, caller: Caller, query: str) -> str:
        """Live policies as JSON, ranked by full-text relevance to ``query`` ("" = all)."""
        return to_json(await self._repo().search(query))

    @method(ACTION_OBSERVE, in_args=(("policy_id", "s"),), out_args=(("policy", "s"),))
    async def GetPolicy(self, caller: Caller, policy_id: str) -> str:
        """One policy version with its document, parameters and state, as JSON."""
        return to_json(await self._repo().get(policy_id))

    @method(ACTION_OBSERVE, in_args=(("policy_id", "s"),), out_args=(("history", "s"),))
    async def GetPolicyHistory(self, caller: Caller, policy_id: str) -> str:
        """Deployments with measured outcomes, and antipatterns, of one version."""
        return to_json(await self._repo().history(policy_id))

    @method(ACTION_SUBMIT, in_args=(("document", "s"),), out_args=(("policy_id", "s"),),
            mutating=True)
    async def SubmitPolicy(self, caller: Caller, document: str) -> str:
        """Store a TOML policy as a candidate; return its id (the SHA-256 of the text)."""
        provenance = "agent" if caller.uid in self.agent_uids else "user"
        return await self._repo().add(document, provenance, f"uid {caller.uid}", caller.uid)

    @method(ACTION_ADMIN, in_args=(("policy_id", "s"), ("state", "s")),
            out_args=(("policy", "s"),), mutating=True)
    async def SetPolicyState(self, caller: Caller, policy_id: str, state: str) -> str:
        """Promote or retire a version: state is candidate, verified, proven or retired."""
        policy = await self._repo().set_state(policy_id, state)
        policy.pop("document", None)
        return to_json(policy)

    @method(ACTION_VERIFY, in_args=(("policy_id", "s"),),
            out_args=(("token", "s"), ("report", "s")), mutating=True)
    async def VerifyPolicy(self, caller: Caller, policy_id: str) -> tuple[str, str]:
        """Run the verifier; return a deployment token ("" on failure) and the report JSON."""
        if self.verifier is None:
            raise NotSupported("the verifier is not available in this daemon")
        token, report = await self.verifier.verify(policy_id, caller.uid,
                                                   await self._active_policies())
        return token, to_json(report)

    async def _active_policies(self) -> list[dict[str, Any]]:
        """Policies of live deployments (for the verifier's conflict check)."""
        deployer = getattr(self, "deployer", None)  # set by DeployAPI's host
        if deployer is None:
            return []
        out = []
        for dep in await deployer.deployments(live_only=True):
            try:
                policy = await self._repo().get(dep["policy_id"])
            except NotFound:
                continue
            out.append({"policy_id": policy["id"], "name": policy["name"],
                        "subsystem": policy["subsystem"], "document": policy["document"],
                        "deployment_id": dep["id"]})
        return out

    @method(ACTION_OBSERVE, in_args=(("digest", "s"),), out_args=(("report", "s"),))
    async def GetVerificationReport(self, caller: Caller, digest: str) -> str:
        """The report a token's ``report_digest`` names: exactly the text that was digested."""
        if self.verifier is None or self.verifier.reports is None:
            raise NotSupported("verification reports are not kept in this daemon")
        return await self.verifier.reports.get(digest)

    @method(ACTION_OBSERVE, out_args=(("keys", "s"),))
    def GetVerifierKeys(self, caller: Caller) -> str:
        """The verifier's Ed25519 public keys (base64, raw), current and retiring."""
        if self.tokens is None:
            raise NotSupported("tokens are not available in this daemon")
        return to_json(self.tokens.keys.public_keys())

    @method(ACTION_ADMIN, out_args=(("key_id", "s"),), mutating=True)
    def RotateVerifierKey(self, caller: Caller) -> str:
        """Make a new signing key; tokens of the old one stay valid until they expire."""
        if self.tokens is None:
            raise NotSupported("tokens are not available in this daemon")
        return self.tokens.keys.rotate()
