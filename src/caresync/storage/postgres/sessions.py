"""A server's sessions, and the accounts generation that tells a running server
that sessions ended early."""

from __future__ import annotations

from caresync.storage._arguments import (
    check_binding,
    check_session,
    no_unbound_session,
    session_stored,
)
from caresync.storage.base import SessionRow, check_session_selector, check_text
from caresync.storage.postgres._sql import Conn, scalar
from caresync.storage.postgres.core import PostgresCore

__all__ = ["SessionsPart"]

_GENERATION_KEY = "caresync.accounts_generation"

_SESSION_WHERE = {
    "replica_id": "replica_id = %s",
    "user": "organisation = %s AND username = %s",
    "expired_at_ms": "expires_ms <= %s",
    "token_hash": "token_hash = %s",
}


def bump_accounts_generation(raw: Conn) -> None:
    raw.execute(
        "INSERT INTO meta (key, value) VALUES (%s, '1') ON CONFLICT (key)"
        " DO UPDATE SET value = (CAST(meta.value AS bigint) + 1)::text",
        (_GENERATION_KEY,),
    )


def note_replica_account(raw: Conn, replica_id: str, username: str, now_ms: int) -> None:
    """Record that ``username`` logged in on ``replica_id`` (kept from the first time)."""
    raw.execute(
        "INSERT INTO replica_accounts (replica_id, username, first_ms) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (replica_id, username, now_ms),
    )


def end_user_sessions(raw: Conn, organisation: str, username: str) -> None:
    raw.execute(
        "DELETE FROM sessions WHERE organisation = %s AND username = %s", (organisation, username)
    )
    bump_accounts_generation(raw)


class SessionsPart(PostgresCore):
    """A server's sessions and its accounts generation."""

    async def add_session(self, session: SessionRow) -> None:
        """Store a new session; InvalidInputError for a token hash already stored."""
        check_session(session)

        def job(raw: Conn) -> None:
            def body() -> None:
                row = raw.execute(
                    "INSERT INTO sessions (token_hash, organisation, username, replica_id,"
                    " created_ms, expires_ms) VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (token_hash) DO NOTHING RETURNING 1",
                    (
                        session.token_hash,
                        session.organisation,
                        session.username,
                        session.replica_id,
                        session.created_ms,
                        session.expires_ms,
                    ),
                ).fetchone()
                if row is None:
                    raise session_stored()
                if session.replica_id is not None:
                    note_replica_account(
                        raw, session.replica_id, session.username, session.created_ms
                    )

            self._write(raw, body)

        await self._run("storing a session", job)

    async def get_session(self, token_hash: str) -> SessionRow | None:
        """The session with that token hash, or None."""
        check_text(token_hash, "token_hash")

        def job(raw: Conn) -> SessionRow | None:
            row = raw.execute(
                "SELECT token_hash, organisation, username, replica_id, created_ms, expires_ms"
                " FROM sessions WHERE token_hash = %s",
                (token_hash,),
            ).fetchone()
            return None if row is None else SessionRow(*row)

        return await self._run("reading a session", job)

    async def bind_session(self, token_hash: str, replica_id: str) -> None:
        """Bind a session opened before enrolment to its new replica (only an unbound one)."""
        check_binding(token_hash, replica_id)

        def job(raw: Conn) -> None:
            def body() -> None:
                row = raw.execute(
                    "UPDATE sessions SET replica_id = %s WHERE token_hash = %s"
                    " AND replica_id IS NULL RETURNING username",
                    (replica_id, token_hash),
                ).fetchone()
                if row is None:
                    raise no_unbound_session()
                note_replica_account(raw, replica_id, row[0], self._now_ms())

            self._write(raw, body)

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
        kind, args = check_session_selector(replica_id, user, expired_at_ms, token_hash)
        where = _SESSION_WHERE[kind]

        def job(raw: Conn) -> int:
            def body() -> int:
                ended = raw.execute(f"DELETE FROM sessions WHERE {where}", args).rowcount
                if ended and expired_at_ms is None:
                    bump_accounts_generation(raw)  # ended early: connections re-check
                return ended

            return self._write(raw, body)

        return await self._run("ending sessions", job)

    async def accounts_generation(self) -> int:
        """Grows whenever sessions end early, whichever process ended them."""
        return await self._run(
            "reading the accounts generation",
            lambda raw: scalar(
                raw, "SELECT CAST(value AS bigint) FROM meta WHERE key = %s", _GENERATION_KEY
            ),
        )
