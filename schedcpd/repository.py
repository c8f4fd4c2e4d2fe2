"""The Policy Repository: every policy version, its metadata, history and lessons.

A policy is a TOML document (format in docs/policies.md).  Each version is
identified by the SHA-256 of its text (``policy_id``), so a verified digest
always names exactly the text that was checked.  Metadata comes from the
document's ``[policy]`` table; content is checked by the owning subsystem's
``schedcp_validate`` hook before anything is stored.

Lifecycle: ``candidate`` (stored) → ``verified`` (passed the verifier) →
``proven`` (deployed and measured good), or ``retired`` (withdrawn; a drop-in
file removed; superseded).  Provenance: ``builtin`` (policies/), ``user``
(drop-in file or an admin's submission), ``agent`` (submitted by the agent's
uid), ``bundle`` (imported from a policy bundle another host verified,
:mod:`schedcpd.bundles`), always with the source (file path, caller uid, or
the key that signed the bundle).

Full-text search (SQLite FTS5, porter stemming, BM25 with the name and the
target workloads weighted above the prose) answers natural descriptions of
a workload.
"""

from __future__ import annotations

import json
import logging
import re
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from schedcpd import policy_parts
from schedcpd.errors import InvalidArgument, NotFound
from schedcpd.state import StateStore
from schedcpd.tokens import digest_of

_LOGGER = logging.getLogger(__name__)

STATES = ("candidate", "verified", "proven", "retired")
PROVENANCES = ("builtin", "user", "agent", "bundle")
TRACKS = ("T1", "T2", "T3")
MAX_DOCUMENT_BYTES = 64 * 1024

Validator = Callable[[str, dict[str, Any]], list[dict[str, Any]] | None]

_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or that the this "
    "to was were will with next beside while when where which who my our we i".split()
)


def migrate_repository(db: Database) -> None:
    """Schema: policies (+ FTS5 index), outcomes and antipatterns."""
    db.table("policies").create(
        {"id": str, "name": str, "subsystem": str, "track": str, "description": str,
         "workloads": str, "tags": str, "parameters": str, "provenance": str, "source": str,
         "uid": int, "state": str, "created": float, "updated": float, "document": str},
        pk="id",
    )
    db.table("policies").create_index(["name"])
    db.table("policies").enable_fts(
        ["name", "description", "workloads", "tags"], create_triggers=True, tokenize="porter"
    )
    db.table("policy_outcomes").create(
        {"id": int, "policy_id": str, "time": float, "deployment_id": str, "outcome": str,
         "metrics": str, "note": str},
        pk="id", foreign_keys=[("policy_id", "policies", "id")],
    )
    db.table("policy_outcomes").create_index(["policy_id"])
    db.table("antipatterns").create(
        {"id": int, "policy_id": str, "time": float, "profile": str, "metric": str,
         "regression": float, "detail": str},
        pk="id", foreign_keys=[("policy_id", "policies", "id")],
    )
    db.table("antipatterns").create_index(["policy_id"])


def migrate_retired_by(db: Database) -> None:
    """``policies.retired_by``: "file" (its policy file changed or went) or "admin".

    A version retired because its file changed comes back when the file holds
    it again; one an admin retired stays retired until an admin says otherwise.
    """
    db.table("policies").add_column("retired_by", str, not_null_default="")
    db.execute("UPDATE policies SET retired_by = 'file' WHERE state = 'retired'")


def parse_document(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; raise InvalidArgument naming the source and the position."""
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise InvalidArgument(f"{source}: policy is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument(f"{source}: not valid TOML: {err}") from err
    except RecursionError as err:  # tomllib recurses into nested arrays and inline tables
        raise InvalidArgument(f"{source}: not valid TOML: arrays or inline tables nested "
                              "too deeply to parse") from err


def policy_scope(doc: dict[str, Any]) -> dict[str, Any]:
    """The scope a policy document acts on: its groups' names, in order.

    The verifier signs it into the token (claim ``scope``) and ``Deploy``
    refuses a token whose scope is not this, derived again from the stored
    document being deployed.  A multi-subsystem policy's scope also lists
    its subsystems, and names each group ``<subsystem>/<group>``
    (:mod:`schedcpd.policy_parts`).
    """
    return policy_parts.scope_of(doc)


def _metadata(doc: dict[str, Any], source: str, default_subsystem: str) -> dict[str, Any]:
    meta = doc.get("policy")
    if not isinstance(meta, dict):
        raise InvalidArgument(f"{source}: policy: a [policy] table is required")
    for key in ("name", "description"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            raise InvalidArgument(f"{source}: policy.{key}: a non-empty string is required")
    track = meta.get("track", "T1")
    if track not in TRACKS:
        raise InvalidArgument(f"{source}: policy.track: must be one of {', '.join(TRACKS)}")
    if policy_parts.is_multi(doc):
        subsystem = policy_parts.label(policy_parts.declared(doc, source))
    else:
        subsystem = meta.get("subsystem", default_subsystem)
    if not isinstance(subsystem, str):
        raise InvalidArgument(f"{source}: policy.subsystem: must be a string")
    for key in ("workloads", "tags"):
        value = meta.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{source}: policy.{key}: must be a list of strings")
    params = doc.get("parameters", {})
    return {
        "name": meta["name"], "subsystem": subsystem, "track": track,
        "description": " ".join(meta["description"].split()),
        "workloads": json.dumps(meta.get("workloads", [])),
        "tags": json.dumps(meta.get("tags", [])),
        "parameters": json.dumps(params if isinstance(params, dict) else {}),
    }


# A field path: dotted parts, each bare or a quoted string, with [n] indices.
_FIELD_PATH = re.compile(r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")(?:\[\d+\])*'
                         r'(?:\.(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")(?:\[\d+\])*)*')


def _describe(finding: dict[str, Any], source: str) -> str:
    """``source: field: reason`` (a plugin may have put its own prefix on the reason)."""
    raw = str(finding.get("field") or "")
    reason = str(finding.get("message", ""))
    marker = f": {raw}: "
    if raw and marker in reason:
        reason = reason.split(marker, 1)[1]
    # A field named by an odd key (empty, spaces, non-ASCII) is quoted as a whole.
    field = raw if _FIELD_PATH.fullmatch(raw) else json.dumps(raw, ensure_ascii=False)
    return f"{source}: {field}: {reason}"


def _file_holds(source: str, text: str) -> bool:
    """Whether ``source`` is a policy file that still has exactly ``text``."""
    if not source.startswith("/"):  # a submission ("uid N"): it stays its caller's
        return True
    try:
        return Path(source).read_text() == text
    except (OSError, UnicodeDecodeError):
        return False


def _fts_query(query: str) -> str | None:
    words = [w for w in re.findall(r"[a-z0-9]+", query.lower())
             if w not in _STOPWORDS and len(w) > 1]
    if not words:
        return None
    # OR: a description of a workload shares some words with a policy, rarely all.
    return " OR ".join(f"{w}*" if len(w) > 3 else w for w in dict.fromkeys(words))


def _row_out(row: dict[str, Any], full: bool = False) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "name", "subsystem", "track", "description", "provenance",
                               "source", "state", "created", "updated")}
    out["workloads"] = json.loads(row["workloads"])
    out["tags"] = json.loads(row["tags"])
    if full:
        out["parameters"] = json.loads(row["parameters"])
        out["uid"] = row["uid"]
        out["document"] = row["document"]
    return out


class Repository:
    """Policy versions in the daemon's database."""

    def __init__(self, store: StateStore, validator: Validator, default_subsystem: str) -> None:
        """``default_subsystem``: of a document whose ``[policy]`` names none
        (``[repository] default_subsystem`` in schedcpd.toml)."""
        self._store = store
        self._validate = validator
        self._default_subsystem = default_subsystem

    # -- adding ---------------------------------------------------------

    def check(self, text: str, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Parse and validate a document; return (document, metadata) or raise."""
        doc = parse_document(text, source)
        meta = _metadata(doc, source, self._default_subsystem)
        errors = []
        for part in policy_parts.split(doc, meta["subsystem"], source):
            findings = self._validate(part.subsystem, part.doc)
            if findings is None:
                field = "policy.subsystems" if part.qualified else "policy.subsystem"
                raise InvalidArgument(f"{source}: {field}: no enabled subsystem "
                                      f"{part.subsystem!r}")
            # A part's findings name their field inside the part's table.
            errors += [policy_parts.in_part(f, part)
                       for f in findings if f.get("severity", "error") == "error"]
        if errors:
            raise InvalidArgument("; ".join(_describe(f, source) for f in errors))
        return doc, meta

    async def add(self, text: str, provenance: str, source: str, uid: int = 0,
                  replaces: bool = False) -> str:
        """Store a validated version (idempotent by digest); return its policy_id.

        With ``replaces`` (a policy file: built-in or drop-in), the new
        version retires the versions the same file held before.  Versions
        submitted over D-Bus never retire each other: one caller's policies
        are many, not versions of one.
        """
        assert provenance in PROVENANCES
        _doc, meta = self.check(text, source)
        policy_id = digest_of(text)
        now = time.time()
        row = {"id": policy_id, **meta, "provenance": provenance, "source": source,
               "uid": uid, "state": "candidate", "created": now, "updated": now,
               "document": text}

        def insert(db: Database) -> bool:
            with db.conn:
                if replaces:
                    # The same file (or built-in) now says something else.
                    db.execute("UPDATE policies SET state = 'retired', retired_by = 'file', "
                               "updated = ? WHERE source = ? AND state != 'retired' AND id != ?",
                               [now, source, policy_id])
                known = db.execute("SELECT source FROM policies WHERE id = ?",
                                   [policy_id]).fetchone()
                if known:
                    if replaces and known[0] != source and not _file_holds(known[0], text):
                        # Renamed, or the file that held this text no longer does: this
                        # file holds it now (else removing the old one would retire it).
                        db.execute("UPDATE policies SET source = ?, provenance = ? "
                                   "WHERE id = ?", [source, provenance, policy_id])
                    db.execute("UPDATE policies SET state = 'candidate', retired_by = '', "
                               "updated = ? WHERE id = ? AND state = 'retired' AND source = ? "
                               "AND retired_by != 'admin'", [now, policy_id, source])
                    return False
                db.table("policies").insert(row)
                return True

        if await self._store.run(insert):
            _LOGGER.info("policy %s (%s) stored from %s as %s", meta["name"], policy_id[:12],
                         source, provenance)
        return policy_id

    async def retire_source(self, source: str) -> int:
        """Retire every live version that came from ``source``; return how many."""
        def retire(db: Database) -> int:
            with db.conn:
                return db.execute("UPDATE policies SET state = 'retired', retired_by = 'file', "
                                  "updated = ? WHERE source = ? AND state != 'retired'",
                                  [time.time(), source]).rowcount

        count = await self._store.run(retire)
        if count:
            _LOGGER.info("retired %d policy version(s) from %s", count, source)
        return count

    async def sources(self, prefix: str) -> set[str]:
        """Sources of live versions starting with ``prefix`` (a directory)."""
        def query(db: Database) -> set[str]:
            return {r[0] for r in db.execute(
                "SELECT DISTINCT source FROM policies WHERE state != 'retired' "
                "AND source LIKE ?", [prefix.rstrip("/") + "/%"])}
        return await self._store.run(query)

    # -- reading --------------------------------------------------------

    async def get(self, policy_id: str) -> dict[str, Any]:
        """The version ``policy_id`` (a unique prefix of at least 8 digits works)."""
        def query(db: Database) -> list[dict[str, Any]]:
            return list(db.table("policies").rows_where("id LIKE ?", [policy_id + "%"], limit=2))

        if not re.fullmatch(r"[0-9a-f]{8,64}", policy_id or ""):
            raise InvalidArgument("policy_id must be 8-64 lower-case hex digits")
        rows = await self._store.run(query)
        if not rows:
            raise NotFound(f"no policy {policy_id}")
        if len(rows) > 1:
            raise InvalidArgument(f"policy id prefix {policy_id} is ambiguous")
        return _row_out(rows[0], full=True)

    async def search(self, query: str, limit: int = 20,
                     include_retired: bool = False) -> list[dict[str, Any]]:
        """Live policies ranked for ``query`` (all of them, by name, when empty)."""
        fts = _fts_query(query)
        live = "" if include_retired else "AND p.state != 'retired'"

        def run(db: Database) -> list[dict[str, Any]]:
            if fts is None:
                sql = f"SELECT p.* FROM policies p WHERE 1 {live} ORDER BY p.name LIMIT ?"
                cur = db.execute(sql, [limit])
            else:
                # Column weights: name, description, workloads, tags.
                sql = (f"SELECT p.*, bm25(policies_fts, 8.0, 1.0, 4.0, 3.0) AS rank "
                       f"FROM policies_fts JOIN policies p ON p.rowid = policies_fts.rowid "
                       f"WHERE policies_fts MATCH ? {live} ORDER BY rank LIMIT ?")
                cur = db.execute(sql, [fts, limit])
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

        rows = await self._store.run(run)
        out = []
        for row in rows:
            item = _row_out(row)
            if "rank" in row:
                item["score"] = round(-row["rank"], 3)
            out.append(item)
        return out

    async def set_state(self, policy_id: str, state: str) -> dict[str, Any]:
        """Move a version to ``state`` (promotion or retirement)."""
        if state not in STATES:
            raise InvalidArgument(f"state must be one of {', '.join(STATES)}")
        policy = await self.get(policy_id)

        def update(db: Database) -> None:
            with db.conn:
                db.execute("UPDATE policies SET state = ?, retired_by = ?, updated = ? "
                           "WHERE id = ?", [state, "admin" if state == "retired" else "",
                                            time.time(), policy["id"]])

        await self._store.run(update)
        _LOGGER.info("policy %s (%s): %s -> %s", policy["name"], policy["id"][:12],
                     policy["state"], state)
        return {**policy, "state": state}

    # -- history --------------------------------------------------------

    async def record_outcome(self, policy_id: str, deployment_id: str, outcome: str,
                             metrics: dict[str, Any], note: str = "",
                             once_per: str = "") -> bool:
        """Append a deployment's measured outcome to the policy's history.

        With ``once_per`` (an outcome prefix), nothing is added when the
        deployment already has an outcome starting with it (checked and
        written in one transaction); returns whether the row was added.
        """
        row = {"policy_id": policy_id, "time": time.time(), "deployment_id": deployment_id,
               "outcome": outcome, "metrics": json.dumps(metrics), "note": note}

        def insert(db: Database) -> bool:
            with db.conn:
                if once_per and db.execute(
                        "SELECT 1 FROM policy_outcomes WHERE deployment_id = ? "
                        "AND substr(outcome, 1, ?) = ?",
                        [deployment_id, len(once_per), once_per]).fetchone():
                    return False
                db.table("policy_outcomes").insert(row)
                return True

        return await self._store.run(insert)

    async def record_antipattern(self, policy_id: str, profile: str, metric: str,
                                 regression: float, detail: str = "") -> None:
        """Remember that the policy regressed ``metric`` by ``regression`` on ``profile``."""
        row = {"policy_id": policy_id, "time": time.time(), "profile": profile,
               "metric": metric, "regression": regression, "detail": detail}

        def insert(db: Database) -> None:
            with db.conn:
                db.table("antipatterns").insert(row)

        await self._store.run(insert)

    async def history(self, policy_id: str) -> dict[str, Any]:
        """Deployments with outcomes, and antipatterns, of one version."""
        policy = await self.get(policy_id)

        def query(db: Database) -> dict[str, Any]:
            outcomes = list(db.table("policy_outcomes").rows_where(
                "policy_id = ?", [policy["id"]], order_by="time"))
            for o in outcomes:
                o["metrics"] = json.loads(o["metrics"])
            anti = list(db.table("antipatterns").rows_where(
                "policy_id = ?", [policy["id"]], order_by="time"))
            return {"outcomes": outcomes, "antipatterns": anti}

        return {"policy_id": policy["id"], "name": policy["name"], "state": policy["state"],
                **await self._store.run(query)}


async def load_directory(repo: Repository, directory: Path, provenance: str,
                         errors: dict[str, str], recursive: bool = False) -> list[str]:
    """Store every ``*.toml`` in ``directory``; retire versions of files now gone.

    With ``recursive``, files in its subdirectories too (the built-ins keep
    their T2 schedulers in ``t2/``).  An invalid file is reported in
    ``errors`` (path -> reason) and the others still load.  Returns the ids
    stored.
    """
    ids = []
    seen = set()
    pattern = "**/*.toml" if recursive else "*.toml"
    for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
        seen.add(str(path))
        try:
            ids.append(await repo.add(path.read_text(), provenance, str(path), replaces=True))
            errors.pop(str(path), None)
        except (InvalidArgument, OSError, UnicodeDecodeError) as err:
            errors[str(path)] = str(err)
            _LOGGER.error("policy file rejected: %s", err)
    for source in await repo.sources(str(directory)):
        if source not in seen:
            await repo.retire_source(source)
            errors.pop(source, None)
    for stale in [p for p in errors if p.startswith(str(directory)) and p not in seen]:
        errors.pop(stale, None)
    return ids
