"""A resumed login's reads, in one job on the store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import cast

from caresync.storage._resume import check_resume_query
from caresync.storage.base import ResumeReads
from caresync.storage.sqlite.accounts import (
    sql_organisation_accounts,
    sql_replica,
    sql_secret_hash,
    sql_user,
)
from caresync.storage.sqlite.audit import sql_newest_tail
from caresync.storage.sqlite.core import BRIEF_ROWS, SQLiteCore
from caresync.storage.sqlite.meta import sql_meta
from caresync.storage.sqlite.sessions import sql_session

__all__ = ["BRIEF_ACCOUNTS", "LoginsPart"]

BRIEF_ACCOUNTS = 4 * BRIEF_ROWS
"""A login's reads run as a brief read (``SQLiteCore._run``) only while no login read
so far found an organisation of more accounts than this, and read no more than this
many and one there: they read every account of the user's organisation (about 0.8 ms
a thousand), which no key bounds."""


class LoginsPart(SQLiteCore):
    """What a login reads, together: one trip to the store's thread, not six."""

    async def read_resume(
        self, token_hash: str, replica_id: str, *, meta_keys: Sequence[str] = ()
    ) -> ResumeReads:
        """The session, the replica, its secret hash and audit tail, the account and its
        organisation's accounts, and ``meta_keys``, read as of one snapshot."""
        token_hash, replica_id, keys = check_resume_query(token_hash, replica_id, meta_keys)

        def read(raw: sqlite3.Connection, most: int) -> ResumeReads | None:
            """The reads; None if the organisation has more than ``most`` accounts
            (-1: no bound)."""
            raw.execute("BEGIN")  # one snapshot for every read
            try:
                session = sql_session(raw, token_hash)
                account = accounts = None
                if session is not None:
                    account = sql_user(raw, session.organisation, session.username)
                    accounts = sql_organisation_accounts(
                        raw, session.organisation, -1 if most < 0 else most + 1
                    )
                    # One job at a time: one writer of the count, whichever thread.
                    self._most_accounts = max(self._most_accounts or 0, len(accounts))
                    if 0 <= most < len(accounts):
                        return None
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

        def whole(raw: sqlite3.Connection) -> ResumeReads:
            return cast(ResumeReads, read(raw, -1))  # no bound: never None

        # Brief while no login read so far found a large organisation (the first read,
        # with nothing learnt yet, goes to the thread), and even then it reads at most
        # BRIEF_ACCOUNTS + 1 accounts here: more, and the reads go to the thread whole.
        if self._most_accounts is not None and self._most_accounts <= BRIEF_ACCOUNTS:
            reads = await self._run(
                "reading a login", lambda raw: read(raw, BRIEF_ACCOUNTS), brief=True
            )
            if reads is not None:
                return reads
        return await self._run("reading a login", whole)
