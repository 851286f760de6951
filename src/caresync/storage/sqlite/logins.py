"""A resumed login's reads, in one job on the store's thread; failed logins, in memory."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import cast

from caresync.exceptions import StorageError
from caresync.storage._resume import check_resume_query
from caresync.storage.base import ResumeReads
from caresync.storage.sqlite.accounts import (
    sql_account_standings,
    sql_replica,
    sql_secret_hash,
    sql_user,
)
from caresync.storage.sqlite.audit import sql_newest_tail
from caresync.storage.sqlite.core import BRIEF_ROWS, SQLiteCore
from caresync.storage.sqlite.meta import sql_meta
from caresync.storage.sqlite.sessions import sql_session
from caresync.throttle import FailureTable, ThrottlePolicy

__all__ = ["BRIEF_ACCOUNTS", "LoginsPart"]

BRIEF_ACCOUNTS = 4 * BRIEF_ROWS
"""A login's reads run as a brief read (``SQLiteCore._run``) for an organisation of at
most this many accounts: they read every account of the user's organisation (about
0.8 ms a thousand), which no key bounds. A brief one reads this many and one at most
(none for an organisation known to be larger), then hands the reads over whole."""


class LoginsPart(SQLiteCore):
    """What a login reads, together: one trip to the store's thread, not six; and the
    failed logins the server's throttle counts.

    Failed logins are kept in memory (a :class:`~caresync.throttle.FailureTable`), not
    in the file: one process serves an SQLite database (its writer lock), so memory is
    shared by every login it serves, and a failed login costs no write transaction
    taken from the pushes. A restart forgets them, as it always did.
    """

    _login_failures: FailureTable | None = None

    def _failures(self, what: str) -> FailureTable:
        if self._conn is None:
            raise StorageError(f"{what}: the store at {self.path} is closed")
        if self._login_failures is None:
            self._login_failures = FailureTable()
        return self._login_failures

    async def login_wait_ms(self, keys: Sequence[str], now_ms: int, forget_after_ms: int) -> int:
        """Milliseconds until a login counted against ``keys`` may be tried (0: now)."""
        return self._failures("reading failed logins").wait_ms(keys, now_ms, forget_after_ms)

    async def login_failed(
        self, keys: Sequence[tuple[str, int]], now_ms: int, policy: ThrottlePolicy
    ) -> None:
        """Count a failed login against each ``(key, free)`` (see ``ServerStore``)."""
        self._failures("counting a failed login").failed(keys, now_ms, policy)

    async def login_claim(self, key: str, free: int, now_ms: int, policy: ThrottlePolicy) -> int:
        """Count a failed login against ``key`` unless it is locked (see ``ServerStore``)."""
        return self._failures("counting a failed login").claim(key, free, now_ms, policy)

    async def login_succeeded(self, key: str) -> None:
        """Forget the failures of ``key``."""
        self._failures("clearing failed logins").succeeded(key)

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
                account = accounts = standings = None
                if session is not None:
                    organisation = session.organisation
                    large = self._large_organisations
                    if most >= 0 and organisation in large:
                        return None  # known to be large: read whole on the thread
                    account = sql_user(raw, organisation, session.username)
                    standings = sql_account_standings(
                        raw, organisation, -1 if most < 0 else most + 1
                    )
                    accounts = {user: s.display_name for user, s in standings.items()}
                    # One job at a time: one writer of the set, whichever thread.
                    if len(accounts) > BRIEF_ACCOUNTS:
                        large.add(organisation)
                    else:
                        large.discard(organisation)
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
                    standings=standings,
                )
            finally:
                if raw.in_transaction:  # SQLite may have rolled back itself (I/O error)
                    raw.execute("COMMIT")

        def whole(raw: sqlite3.Connection) -> ResumeReads:
            return cast(ResumeReads, read(raw, -1))  # no bound: never None

        # Brief for a small organisation; a large one's accounts are read whole on the
        # connection's thread (found here in at most BRIEF_ACCOUNTS + 1 rows, once).
        reads = await self._run(
            "reading a login", lambda raw: read(raw, BRIEF_ACCOUNTS), brief=True
        )
        if reads is not None:
            return reads
        return await self._run("reading a login", whole)
