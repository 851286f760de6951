"""A server's sessions, and the accounts generation that tells a running server
that sessions ended early."""

from __future__ import annotations

import sqlite3

from caresync.storage._arguments import (
    check_binding,
    check_session,
    no_unbound_session,
    session_stored,
)
from caresync.storage._cipher import INTEGRITY_ERRORS
from caresync.storage.base import SessionRow, check_session_selector, check_text
from caresync.storage.sqlite._sql import _scalar
from caresync.storage.sqlite.core import SQLiteCore

__all__ = ["SessionsPart", "sql_session"]


_GENERATION_KEY = "caresync.accounts_generation"


def _bump_accounts_generation(raw: sqlite3.Connection) -> None:
    raw.execute(
        "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key)"
        " DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        (_GENERATION_KEY,),
    )


def _note_replica_account(
    raw: sqlite3.Connection, replica_id: str, username: str, now_ms: int
) -> None:
    """Record that ``username`` logged in on ``replica_id`` (kept from the first time)."""
    raw.execute(
        "INSERT OR IGNORE INTO replica_accounts (replica_id, username, first_ms) VALUES (?, ?, ?)",
        (replica_id, username, now_ms),
    )


def _end_user_sessions(raw: sqlite3.Connection, organisation: str, username: str) -> None:
    raw.execute(
        "DELETE FROM sessions WHERE organisation = ? AND username = ?", (organisation, username)
    )
    _bump_accounts_generation(raw)


_SESSION_WHERE = {
    "replica_id": "replica_id = ?",
    "user": "organisation = ? AND username = ?",
    "expired_at_ms": "expires_ms <= ?",
    "token_hash": "token_hash = ?",
}


def _session_filter(
    replica_id: str | None,
    user: tuple[str, str] | None,
    expired_at_ms: int | None,
    token_hash: str | None,
) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause of the one way of choosing sessions the caller gave."""
    kind, values = check_session_selector(replica_id, user, expired_at_ms, token_hash)
    return _SESSION_WHERE[kind], values


def sql_session(raw: sqlite3.Connection, token_hash: str) -> SessionRow | None:
    """The session with that token hash, or None."""
    row = raw.execute(
        "SELECT token_hash, organisation, username, replica_id, created_ms, expires_ms"
        " FROM sessions WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    return None if row is None else SessionRow(*row)


class SessionsPart(SQLiteCore):
    """A server's sessions and its accounts generation."""

    async def add_session(self, session: SessionRow) -> None:
        """Store a new session; InvalidInputError for a token hash already stored."""
        check_session(session)

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                try:
                    raw.execute(
                        "INSERT INTO sessions (token_hash, organisation, username, replica_id,"
                        " created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            session.token_hash,
                            session.organisation,
                            session.username,
                            session.replica_id,
                            session.created_ms,
                            session.expires_ms,
                        ),
                    )
                except INTEGRITY_ERRORS:
                    raise session_stored() from None
                if session.replica_id is not None:
                    _note_replica_account(
                        raw, session.replica_id, session.username, session.created_ms
                    )

            self._write(raw, body, accounts=True)

        await self._run("storing a session", job)

    async def get_session(self, token_hash: str) -> SessionRow | None:
        """The session with that token hash, or None."""
        check_text(token_hash, "token_hash")

        return await self._run("reading a session", lambda raw: sql_session(raw, token_hash))

    async def bind_session(self, token_hash: str, replica_id: str) -> None:
        """Bind a session opened before enrolment to its new replica (only an unbound one)."""
        check_binding(token_hash, replica_id)

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if not raw.execute(
                    "UPDATE sessions SET replica_id = ? WHERE token_hash = ?"
                    " AND replica_id IS NULL",
                    (replica_id, token_hash),
                ).rowcount:
                    raise no_unbound_session()
                (username,) = raw.execute(
                    "SELECT username FROM sessions WHERE token_hash = ?", (token_hash,)
                ).fetchone()
                _note_replica_account(raw, replica_id, username, self._now_ms())

            self._write(raw, body, accounts=True)

        await self._run("binding a session", job)

    async def end_sessions(
        self,
        *,
        replica_id: str | None = None,
        user: tuple[str, str] | None = None,
        expired_at_ms: int | None = None,
        token_hash: str | None = None,
    ) -> int:
        """Delete sessions of a replica, of a user, expired ones, or one; returns how many."""
        where, args = _session_filter(replica_id, user, expired_at_ms, token_hash)

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                ended = raw.execute(f"DELETE FROM sessions WHERE {where}", args).rowcount
                if ended and expired_at_ms is None:
                    _bump_accounts_generation(raw)  # ended early: connections re-check
                return ended

            return self._write(raw, body, accounts=True)

        return await self._run("ending sessions", job)

    async def accounts_generation(self) -> int:
        """Grows whenever sessions end early; see :class:`~caresync.storage.base.Store`."""
        return await self._run(
            "reading the accounts generation",
            lambda raw: _scalar(raw, "SELECT value FROM meta WHERE key = ?", _GENERATION_KEY),
            brief=True,  # one setting by key, polled by a running server
        )
