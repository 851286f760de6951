"""A resumed login's reads, in one job on the store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from caresync.storage._resume import check_resume_query
from caresync.storage.base import ResumeReads
from caresync.storage.sqlite.accounts import (
    sql_organisation_accounts,
    sql_replica,
    sql_secret_hash,
    sql_user,
)
from caresync.storage.sqlite.audit import sql_newest_tail
from caresync.storage.sqlite.core import SQLiteCore
from caresync.storage.sqlite.meta import sql_meta
from caresync.storage.sqlite.sessions import sql_session

__all__ = ["LoginsPart"]


class LoginsPart(SQLiteCore):
    """What a login reads, together: one trip to the store's thread, not six."""

    async def read_resume(
        self, token_hash: str, replica_id: str, *, meta_keys: Sequence[str] = ()
    ) -> ResumeReads:
        """The session, the replica, its secret hash and audit tail, the account and its
        organisation's accounts, and ``meta_keys``, read as of one snapshot."""
        token_hash, replica_id, keys = check_resume_query(token_hash, replica_id, meta_keys)

        def job(raw: sqlite3.Connection) -> ResumeReads:
            raw.execute("BEGIN")  # one snapshot for every read
            try:
                session = sql_session(raw, token_hash)
                account = accounts = None
                if session is not None:
                    account = sql_user(raw, session.organisation, session.username)
                    accounts = sql_organisation_accounts(raw, session.organisation)
                return ResumeReads(
                    session=session,
                    replica=sql_replica(raw, replica_id),
                    secret_hash=sql_secret_hash(raw, replica_id),
                    account=account,
                    accounts=accounts,
                    audit_tail=sql_newest_tail(raw, replica_id),
                    meta={key: sql_meta(raw, key) for key in keys},
                )
            finally:
                if raw.in_transaction:  # SQLite may have rolled back itself (I/O error)
                    raw.execute("COMMIT")

        return await self._run("reading a login", job, brief=True)
