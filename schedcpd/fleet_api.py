"""The fleet part of the Manager API: trusted verifier keys and policy bundles.

Mixed into :class:`schedcpd.manager.Manager`; each method is one declared
API call with its authorization action (see :mod:`schedcpd.api`).  What a
bundle is and what an import checks: :mod:`schedcpd.bundles`, docs/fleet.md.
"""

from __future__ import annotations

from schedcpd import bundles
from schedcpd.api import Caller, method, to_json
from schedcpd.const import ACTION_OBSERVE, ACTION_VERIFY
from schedcpd.errors import NotSupported
from schedcpd.reports import ReportStore
from schedcpd.repository import Repository
from schedcpd.tokens import TokenAuthority
from schedcpd.verifier import Verifier


class FleetAPI:
    """Fleet methods; the host sets ``repository``, ``verifier`` and ``tokens``."""

    repository: Repository | None = None
    verifier: Verifier | None = None
    tokens: TokenAuthority | None = None

    def _bundle_parts(self) -> tuple[TokenAuthority, Repository, ReportStore]:
        if (self.tokens is None or self.repository is None or self.verifier is None
                or self.verifier.reports is None):
            raise NotSupported("policy bundles need the repository, the verifier's reports "
                               "and tokens, which this daemon does not have")
        return self.tokens, self.repository, self.verifier.reports

    @method(ACTION_OBSERVE, out_args=(("keys", "s"),))
    def GetTrustedKeys(self, caller: Caller) -> str:
        """Trusted verifier keys (id, fingerprint, file, revoked), the revocation list and
        files that could not be used, as JSON."""
        if self.tokens is None:
            raise NotSupported("tokens are not available in this daemon")
        return to_json(self.tokens.keys.trusted_keys())

    @method(ACTION_VERIFY, in_args=(("token", "s"),), out_args=(("bundle", "s"),))
    async def ExportBundle(self, caller: Caller, token: str) -> str:
        """The bundle (policy, report, token; ``schedcp-bundle/1`` JSON) of a token.

        The token is checked, not consumed; its report must be kept here.
        """
        tokens, repo, reports = self._bundle_parts()
        bundle = await bundles.export_bundle(token, tokens=tokens, repository=repo,
                                             reports=reports)
        return bundle.dumps()

    @method(ACTION_VERIFY, in_args=(("bundle", "s"),), out_args=(("result", "s"),),
            mutating=True)
    async def ImportBundle(self, caller: Caller, bundle: str) -> str:
        """Check a bundle (key trusted and not revoked, signature, digests, expiry, schema);
        keep its policy as verified and its report; JSON with the policy id and the token,
        which ``Deploy`` then redeems."""
        tokens, repo, reports = self._bundle_parts()
        return to_json(await bundles.import_bundle(bundle, caller.uid, tokens=tokens,
                                                   repository=repo, reports=reports))
