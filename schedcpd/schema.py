"""The ordered list of database migrations of schedcpd.db.

Append-only: a released migration is never edited or reordered, because the
database records how many have been applied (``PRAGMA user_version``).
"""

from __future__ import annotations

from schedcpd.audit import migrate_audit, migrate_audit_refused
from schedcpd.deployer import migrate_deployment_token, migrate_deployments
from schedcpd.reports import migrate_reports
from schedcpd.repository import migrate_repository, migrate_retired_by
from schedcpd.state import Migration
from schedcpd.tokens import migrate_issued_tokens, migrate_nonces

MIGRATIONS: list[Migration] = [
    migrate_audit,  # 1
    migrate_nonces,  # 2
    migrate_repository,  # 3
    migrate_deployments,  # 4
    migrate_issued_tokens,  # 5
    migrate_retired_by,  # 6
    migrate_reports,  # 7
    migrate_audit_refused,  # 8
    migrate_deployment_token,  # 9
]
