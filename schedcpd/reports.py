"""Verification reports, kept by the digest a deployment token carries.

The verifier signs a report's SHA-256 (claim ``report_digest``), not the
report itself.  Every report of a passed verification is kept here, as the
exact text whose digest was signed, so anyone holding a token can fetch
the evidence it stands for (``GetVerificationReport``) and check it
against the digest.  Reports are kept for as long as the database, like
deployments and the audit trail: their number is bounded by how many
verifications can run (one dynamic test at a time, seconds each).
"""

from __future__ import annotations

import re
import time

from sqlite_utils import Database

from schedcpd.errors import InvalidArgument, NotFound
from schedcpd.state import StateStore
from schedcpd.tokens import digest_of


def migrate_reports(db: Database) -> None:
    """Schema: verification reports by digest (the exact signed text)."""
    db.table("verification_reports").create(
        {"digest": str, "policy_id": str, "uid": int, "created": float, "report": str},
        pk="digest",
    )
    db.table("verification_reports").create_index(["policy_id"])


class ReportStore:
    """Keeps reports and finds them by digest."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def keep(self, text: str, policy_id: str, uid: int) -> str:
        """Store the report ``text`` (verified by ``uid``); return its digest."""
        digest = digest_of(text)
        row = {"digest": digest, "policy_id": policy_id, "uid": uid, "created": time.time(),
               "report": text}

        def insert(db: Database) -> None:
            with db.conn:
                db.table("verification_reports").insert(row, ignore=True)

        await self._store.run(insert)
        return digest

    async def get(self, digest: str) -> str:
        """The report whose SHA-256 is ``digest``, exactly as signed."""
        if not re.fullmatch(r"[0-9a-f]{64}", digest or ""):
            raise InvalidArgument("a report digest is 64 lower-case hex digits (SHA-256)")

        def query(db: Database) -> str | None:
            row = db.execute("SELECT report FROM verification_reports WHERE digest = ?",
                             [digest]).fetchone()
            return None if row is None else str(row[0])

        text = await self._store.run(query)
        if text is None:
            raise NotFound(f"no verification report {digest} is kept here")
        return text
