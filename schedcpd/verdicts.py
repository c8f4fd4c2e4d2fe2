"""The owner's verdict on a deployment: what the caller measured under it.

The daemon's own outcomes say whether a deployment was safe (``active``:
the canary and probation passed; ``reverted``: the breaker tripped).  They
cannot say whether it helped: only the caller that deployed it knows its
goal and measured it (the agent's learning role, :mod:`schedcp_agent.learn`).
``RecordVerdict`` lets that caller (or an admin) append its judgement to the
policy's history, so a later run on the same profile does not reuse as
"proven" a version its own author rolled back as no gain.

A verdict is one JSON object (:data:`SCHEMA`)::

    {"verdict": "no-gain", "metric": "targets' run-queue wait",
     "change": -0.04, "p_value": 0.31, "note": "within the noise"}

It is stored as an outcome row ``agent:<verdict>`` on the deployment's
policy version, with the metric, change, p-value and the recording uid as
its metrics; a ``worse`` verdict also records an antipattern for the
profile the version was written for (its ``profile:<key>`` tag; a version
without one gets ``deployment <id>``, as a breaker trip does), whose
``regression`` is the ratio after / before of the metric (``1 + change``),
as a trip's is.  A verdict
never changes the daemon's own outcomes or the version's state: it can only
keep a version from being reused, never make one look proven.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from schedcpd.errors import Conflict, InvalidArgument
from schedcpd.repository import Repository

_LOGGER = logging.getLogger(__name__)

VERDICTS = ("improved", "no-gain", "worse")
OUTCOME_PREFIX = "agent:"
"""An outcome row recorded from a verdict is ``agent:<verdict>``."""
MAX_VERDICT_BYTES = 4096

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["verdict", "metric"],
    "properties": {
        "verdict": {"enum": list(VERDICTS)},
        "metric": {"type": "string", "minLength": 1, "maxLength": 200},
        "change": {"type": ["number", "null"]},
        "p_value": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "note": {"type": "string", "maxLength": 2000},
    },
}
"""``verdict`` and ``metric`` are required; ``change`` is the relative change
of the metric, (after - before) / before, as measured (its sign is not the
goal's: a latency that fell by 12 % is -0.12); ``p_value`` the one-sided
test's p-value that the deployment is better (null: no test)."""

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def parse(text: str) -> dict[str, Any]:
    """The verdict in ``text``, checked against :data:`SCHEMA`; InvalidArgument names the fault."""
    if len(text.encode()) > MAX_VERDICT_BYTES:
        raise InvalidArgument(f"verdict: larger than {MAX_VERDICT_BYTES} bytes")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InvalidArgument(f"verdict: not JSON: {err}") from err
    error = best_match(_VALIDATOR.iter_errors(value))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "enum" and where == "verdict":
            message = f"unknown verdict {error.instance!r}; one of {', '.join(VERDICTS)}"
        else:
            message = error.message
        raise InvalidArgument(f"verdict{'.' + where if where else ''}: {message}")
    for key in ("change", "p_value"):
        number = value.get(key)
        if isinstance(number, float) and not math.isfinite(number):  # json reads NaN, Infinity
            raise InvalidArgument(f"verdict.{key}: must be a finite number or null, "
                                  f"not {number}")
    for key in ("metric", "note"):
        try:
            str(value.get(key, "")).encode()
        except UnicodeEncodeError as err:  # a JSON escape of a lone surrogate
            raise InvalidArgument(f"verdict.{key}: not valid Unicode text: {err.reason}") from err
    return {"change": None, "p_value": None, "note": "", **value}


def profile_of(policy: dict[str, Any], dep_id: str) -> str:
    """The profile an antipattern of ``policy`` is recorded for (see the module doc)."""
    return next((t for t in policy.get("tags", []) if t.startswith("profile:")),
                f"deployment {dep_id}")


async def record(repo: Repository, deployment: dict[str, Any], verdict: dict[str, Any],
                 uid: int) -> dict[str, Any]:
    """Append ``verdict`` (parsed) on ``deployment`` (the deployer's record) to its history.

    Raises Conflict when the deployment never became active (nothing was
    measured under it) or already has a verdict.  Returns what was recorded.
    """
    dep_id = deployment["id"]
    if not any(e.get("state") == "active" for e in deployment.get("events", [])):
        raise Conflict(f"deployment {dep_id} never became active ({deployment['state']}): "
                       "there is nothing to judge")
    policy = await repo.get(deployment["policy_id"])
    outcome = OUTCOME_PREFIX + verdict["verdict"]
    metrics = {k: verdict[k] for k in ("metric", "change", "p_value")} | {"uid": uid}
    if not await repo.record_outcome(policy["id"], dep_id, outcome, metrics, verdict["note"],
                                     once_per=OUTCOME_PREFIX):
        raise Conflict(f"deployment {dep_id} already has a verdict")
    profile = None
    if verdict["verdict"] == "worse":
        profile = profile_of(policy, dep_id)
        # As a breaker trip's: the ratio after / before of the metric (null: not measured).
        ratio = 1.0 + verdict["change"] if verdict["change"] is not None else math.nan
        await repo.record_antipattern(
            policy["id"], profile, verdict["metric"], ratio,
            f"the deployment's owner judged {dep_id} worse (uid {uid})"
            + (f": {verdict['note']}" if verdict["note"] else ""))
    _LOGGER.info("deployment %s: verdict %s on %s (%s) recorded by uid %d%s", dep_id,
                 verdict["verdict"], policy["name"], policy["id"][:12], uid,
                 f"; antipattern for {profile}" if profile else "")
    return {"deployment_id": dep_id, "policy_id": policy["id"], "outcome": outcome,
            "antipattern": profile}
