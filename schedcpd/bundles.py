"""Policy bundles: a policy, its verification report and its token, as one file.

A bundle carries a verified policy from the host that verified it to hosts
that deploy it without verifying it again (docs/fleet.md).  The format is
one JSON object, version ``schedcp-bundle/1``::

    {"format": "schedcp-bundle/1",
     "policy": "<the policy's TOML text, exactly as verified>",
     "report": "<the verification report's JSON text, exactly as digested>",
     "token":  "schedcp1.<payload>.<signature>"}

**Signed once, by the token.**  The token's Ed25519 signature covers its
claims, among them ``policy_digest`` (the SHA-256 of ``policy``) and
``report_digest`` (the SHA-256 of ``report``), so it covers all three
parts: a changed policy or report no longer hashes to what was signed
(:class:`PolicyTampered`, :class:`ReportTampered`), and a changed token no
longer verifies.  A second, outer signature would add a second scheme to get
wrong and nothing it could catch.  Nothing outside those three parts is
accepted (an unknown field is :class:`MalformedBundle`): any metadata a
bundle carried unsigned would be a claim nobody checks.

Trust never comes from the bundle: the signing key must be this daemon's
own or one in its ``trusted_keys_dir``, and not revoked
(:mod:`schedcpd.keys`).  :func:`import_bundle` checks everything
:meth:`schedcpd.tokens.TokenAuthority.check` checks (key, revocation,
signature, expiry), both digests, that the report is a passed one for this
policy, subsystem, scope and (T2) BPF object, and the policy's schema on
this host; then it stores the policy (provenance ``bundle``, state
``verified``) and the report.  The token is not consumed: ``Deploy`` with
it redeems it on this host, once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schedcpd import errors
from schedcpd.reports import ReportStore
from schedcpd.repository import Repository, policy_scope
from schedcpd.tokens import InvalidToken, ScopeMismatch, TokenAuthority, decode, digest_of
from schedcpd.verifier import artifact_of

FORMAT = "schedcp-bundle/1"
MAX_BUNDLE_BYTES = 1 << 20
_FIELDS = ("format", "policy", "report", "token")


class MalformedBundle(errors.SchedcpError):
    """The bundle is not a ``schedcp-bundle/1`` JSON object with exactly its fields,
    or its parts disagree with each other (a report of another policy, a bad token)."""

    name = "MalformedBundle"


class PolicyTampered(errors.SchedcpError):
    """The bundle's policy text is not the one the token's ``policy_digest`` signs."""

    name = "PolicyTampered"


class ReportTampered(errors.SchedcpError):
    """The bundle's report text is not the one the token's ``report_digest`` signs."""

    name = "ReportTampered"


@dataclass(frozen=True)
class Bundle:
    """The three parts of a bundle, as text."""

    policy: str
    report: str
    token: str

    def dumps(self) -> str:
        """The bundle file's text."""
        return json.dumps({"format": FORMAT, "policy": self.policy, "report": self.report,
                           "token": self.token}, indent=1, sort_keys=True) + "\n"


def parse(text: str) -> Bundle:
    """Read a bundle's text; :class:`MalformedBundle` names what is wrong."""
    if len(text) > MAX_BUNDLE_BYTES:
        raise MalformedBundle(f"a bundle is at most {MAX_BUNDLE_BYTES} bytes, this one "
                              f"{len(text)}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise MalformedBundle(f"a bundle is one JSON object ({FORMAT}): {err}") from err
    if not isinstance(data, dict):
        raise MalformedBundle(f"a bundle is one JSON object ({FORMAT})")
    if data.get("format") != FORMAT:
        raise MalformedBundle(f"bundle format {data.get('format')!r} is not {FORMAT!r}")
    if set(data) != set(_FIELDS):
        extra, missing = sorted(set(data) - set(_FIELDS)), sorted(set(_FIELDS) - set(data))
        raise MalformedBundle(f"a {FORMAT} bundle has exactly the fields "
                              f"{', '.join(_FIELDS)}"
                              + (f"; unknown: {', '.join(extra)}" if extra else "")
                              + (f"; missing: {', '.join(missing)}" if missing else ""))
    for name in _FIELDS[1:]:
        if not isinstance(data[name], str) or not data[name]:
            raise MalformedBundle(f"bundle field {name!r} must be a non-empty string")
    return Bundle(data["policy"], data["report"], data["token"])


async def export_bundle(token: str, *, tokens: TokenAuthority, repository: Repository,
                        reports: ReportStore) -> Bundle:
    """The bundle of a token this daemon can check: its policy and its kept report.

    The token is checked (key, signature, expiry) but not consumed.
    """
    claims = tokens.check(token)
    policy = await repository.get(claims["policy_id"])
    if digest_of(policy["document"]) != claims["policy_digest"]:
        raise errors.Conflict(f"policy {claims['policy_id'][:12]} as stored is not the text "
                              "the token signs")
    try:
        report = await reports.get(claims["report_digest"])
    except errors.NotFound as err:
        raise errors.NotFound(f"the report the token names ({claims['report_digest'][:12]}) "
                              "is not kept here: export the bundle on the host that "
                              "verified the policy") from err
    return Bundle(policy["document"], report, token.strip())


def _check_report(report_text: str, claims: dict[str, Any]) -> dict[str, Any]:
    """The report, if it is a passed verification of what the token names."""
    try:
        report = json.loads(report_text)
    except (ValueError, RecursionError) as err:
        raise MalformedBundle(f"the bundle's report is not JSON: {err}") from err
    if not isinstance(report, dict):
        raise MalformedBundle("the bundle's report is not a JSON object")
    wrong = [f"{name} {report.get(name)!r} (token: {claims[claim]!r})"
             for name, claim in (("policy_id", "policy_id"), ("subsystem", "subsystem"),
                                 ("scope", "scope")) if report.get(name) != claims[claim]]
    if report.get("passed") is not True:
        wrong.append("the verification did not pass")
    if artifact_of(report) != claims.get("artifact"):
        wrong.append(f"BPF object {artifact_of(report)} (token: {claims.get('artifact')})")
    if wrong:
        raise MalformedBundle("the signed report does not vouch for the token: "
                              + "; ".join(wrong))
    return report


async def import_bundle(text: str, uid: int, *, tokens: TokenAuthority,
                        repository: Repository, reports: ReportStore) -> dict[str, Any]:
    """Check a bundle completely, then keep its policy (verified) and report.

    Returns what a deployer needs: ``policy_id``, ``name``, ``subsystem``,
    ``track``, ``kid``, ``expires``, ``report_digest`` and the ``token``
    (not consumed: ``Deploy`` redeems it).
    """
    bundle = parse(text)
    try:
        decode(bundle.token)
    except InvalidToken as err:
        raise MalformedBundle(f"the bundle's token is malformed: {err}") from err
    claims = tokens.check(bundle.token)  # KeyRevoked, UnknownKey, BadSignature, TokenExpired
    policy_digest = digest_of(bundle.policy)
    if policy_digest != claims["policy_digest"] or policy_digest != claims["policy_id"]:
        raise PolicyTampered(f"the bundle's policy hashes to {policy_digest[:12]}, but the "
                             f"token signs {claims['policy_digest'][:12]}: it was changed "
                             "after it was verified")
    if digest_of(bundle.report) != claims["report_digest"]:
        raise ReportTampered(f"the bundle's report hashes to {digest_of(bundle.report)[:12]}, "
                             f"but the token signs {claims['report_digest'][:12]}: it was "
                             "changed after it was verified")
    _check_report(bundle.report, claims)
    source = f"bundle signed by key {claims['kid']}"
    doc, meta = repository.check(bundle.policy, source)  # this host's schema (InvalidArgument)
    if meta["subsystem"] != claims["subsystem"] or policy_scope(doc) != claims["scope"]:
        raise ScopeMismatch(f"the policy's subsystem and scope on this host "
                            f"({meta['subsystem']!r}, {policy_scope(doc)}) are not those the "
                            f"token signs ({claims['subsystem']!r}, {claims['scope']})")
    policy_id = await repository.add(bundle.policy, "bundle", source, uid)
    await reports.keep(bundle.report, policy_id, claims["uid"])
    stored = await repository.get(policy_id)
    if stored["state"] == "candidate":
        stored = await repository.set_state(policy_id, "verified")
    return {"policy_id": policy_id, "name": meta["name"], "subsystem": meta["subsystem"],
            "track": meta["track"], "state": stored["state"], "kid": claims["kid"],
            "uid": claims["uid"], "expires": claims["exp"],
            "report_digest": claims["report_digest"], "token": bundle.token}
