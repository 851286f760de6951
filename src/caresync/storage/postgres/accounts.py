"""A server's accounts and enrolled replicas."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from caresync.audit.chain import AuditEvent
from caresync.storage._arguments import (
    check_audit_append,
    check_enrolment,
    check_new_user,
    check_password_change,
    check_reissue,
    check_secret_hash,
    check_user,
    check_user_admin,
    check_user_display_name,
    enrolled_already,
    no_user,
    not_enrolled,
    secret_refused,
    user_exists,
)
from caresync.storage.base import (
    AccountStanding,
    ReplicaInfo,
    UserAccount,
    account_standing,
    check_count,
    check_optional_text,
    check_outbox_report,
    check_text,
    new_password_mark,
)
from caresync.storage.postgres._sql import Conn
from caresync.storage.postgres.audit import append_own
from caresync.storage.postgres.core import PostgresCore
from caresync.storage.postgres.sessions import bump_accounts_generation, end_user_sessions

__all__ = ["AccountsPart"]


_REPLICA_COLUMNS = (
    "replica_id, organisation, enrolled_by, enrolled_ms, last_seen_ms, revoked_ms,"
    " pending, oldest_pending_ms, device_name"
)


class AccountsPart(PostgresCore):
    """A server's accounts and enrolled replicas."""

    async def add_user(
        self,
        organisation: str,
        username: str,
        password_hash: str,
        *,
        display_name: str | None = None,
        admin: bool = False,
    ) -> None:
        """Add a user to an organisation; InvalidInputError if the name is taken there."""
        check_new_user(organisation, username, password_hash, display_name, admin)
        now = self._now_ms()

        def job(raw: Conn) -> None:
            def body() -> None:
                # ON CONFLICT: another process adding the same name at once is refused too.
                if not raw.execute(
                    "INSERT INTO users (organisation, username, password_hash, created_ms,"
                    " display_name, admin, password_mark) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (
                        organisation,
                        username,
                        password_hash,
                        now,
                        display_name,
                        admin,
                        new_password_mark(),
                    ),
                ).rowcount:
                    raise user_exists(organisation, username)

            self._write(raw, body)

        await self._run(f"adding user {username!r}", job)

    async def get_user(self, organisation: str, username: str) -> UserAccount | None:
        """A user of the organisation, or None."""
        check_user(organisation, username)

        def job(raw: Conn) -> UserAccount | None:
            row = raw.execute(
                "SELECT password_hash, created_ms, disabled_ms, display_name, admin FROM users"
                " WHERE organisation = %s AND username = %s",
                (organisation, username),
            ).fetchone()
            if row is None:
                return None
            return UserAccount(
                organisation, username, row[0], row[1], row[2], row[3], admin=bool(row[4])
            )

        return await self._run(f"reading user {username!r}", job)

    async def set_display_name(
        self, organisation: str, username: str, display_name: str | None
    ) -> None:
        """Set (or clear) how people see an account; InvalidInputError for an unknown user."""
        check_user_display_name(organisation, username, display_name)

        def job(raw: Conn) -> None:
            def body() -> None:
                if not raw.execute(
                    "UPDATE users SET display_name = %s WHERE organisation = %s AND username = %s",
                    (display_name, organisation, username),
                ).rowcount:
                    raise no_user(organisation, username)

            self._write(raw, body)

        await self._run(f"naming user {username!r}", job)

    async def organisation_accounts(self, organisation: str) -> dict[str, str]:
        """Every account of the organisation: username → display name (else username)."""
        check_text(organisation, "organisation")

        def job(raw: Conn) -> dict[str, str]:
            return {
                str(name): str(shown or name)
                for name, shown in raw.execute(
                    "SELECT username, display_name FROM users WHERE organisation = %s"
                    " ORDER BY username",
                    (organisation,),
                )
            }

        return await self._run(f"listing the accounts of {organisation!r}", job)

    async def account_standings(self, organisation: str) -> dict[str, AccountStanding]:
        """Every account of the organisation: shown name, disabled, password mark."""
        check_text(organisation, "organisation")

        def job(raw: Conn) -> dict[str, AccountStanding]:
            return {
                str(name): account_standing(name, shown, disabled_ms, mark)
                for name, shown, disabled_ms, mark in raw.execute(
                    "SELECT username, display_name, disabled_ms, password_mark FROM users"
                    " WHERE organisation = %s ORDER BY username",
                    (organisation,),
                )
            }

        return await self._run(f"reading the accounts of {organisation!r}", job)

    async def replica_accounts(self, replica_ids: Collection[str]) -> dict[str, frozenset[str]]:
        """The accounts that have logged in on each of these replicas."""
        wanted = sorted({check_text(r, "replica_id") for r in replica_ids})

        def job(raw: Conn) -> dict[str, frozenset[str]]:
            found: dict[str, set[str]] = {}
            for replica_id, username in raw.execute(
                "SELECT replica_id, username FROM replica_accounts WHERE replica_id = ANY(%s)",
                (wanted,),
            ):
                found.setdefault(str(replica_id), set()).add(str(username))
            return {replica_id: frozenset(names) for replica_id, names in found.items()}

        return await self._run("reading who logged in on replicas", job)

    async def set_password_hash(
        self, organisation: str, username: str, password_hash: str, *, end_sessions: bool = True
    ) -> None:
        """Replace a user's password hash; InvalidInputError for an unknown user.

        A new password ends the user's sessions (in the same transaction), so a
        token taken before the change resumes nothing; ``end_sessions=False``
        keeps them (a rehash of the same password).
        """
        check_password_change(organisation, username, password_hash)

        def job(raw: Conn) -> None:
            def body() -> None:
                # A new password gets a new mark (laptops then end its offline logins);
                # a rehash of the same password keeps it.
                mark = new_password_mark() if end_sessions else None
                changed = raw.execute(
                    "UPDATE users SET password_hash = %s,"
                    " password_mark = COALESCE(%s::bytea, password_mark)"
                    " WHERE organisation = %s AND username = %s",
                    (password_hash, mark, organisation, username),
                ).rowcount
                if not changed:
                    raise no_user(organisation, username)
                if end_sessions:
                    end_user_sessions(raw, organisation, username)

            self._write(raw, body)

        await self._run(f"updating user {username!r}", job)

    async def set_user_disabled(self, organisation: str, username: str, disabled: bool) -> None:
        """Disable an account (its sessions end at once) or enable it again."""
        check_user(organisation, username)
        when = self._now_ms() if disabled else None

        def job(raw: Conn) -> None:
            def body() -> None:
                changed = raw.execute(
                    "UPDATE users SET disabled_ms = CASE WHEN %s::bigint IS NULL THEN NULL"
                    " ELSE COALESCE(disabled_ms, %s) END"
                    " WHERE organisation = %s AND username = %s",
                    (when, when, organisation, username),
                ).rowcount
                if not changed:
                    raise no_user(organisation, username)
                if disabled:
                    end_user_sessions(raw, organisation, username)

            self._write(raw, body)

        await self._run(f"{'disabling' if disabled else 'enabling'} user {username!r}", job)

    async def set_user_admin(self, organisation: str, username: str, admin: bool) -> None:
        """Grant (True) or revoke (False) an account's administrator role; InvalidInputError
        for an unknown user."""
        check_user_admin(organisation, username, admin)

        def job(raw: Conn) -> None:
            def body() -> None:
                if not raw.execute(
                    "UPDATE users SET admin = %s WHERE organisation = %s AND username = %s",
                    (admin, organisation, username),
                ).rowcount:
                    raise no_user(organisation, username)

            self._write(raw, body)

        await self._run(f"{'granting' if admin else 'revoking'} admin of {username!r}", job)

    async def enrol_replica(
        self,
        replica_id: str,
        organisation: str,
        *,
        enrolled_by: str | None = None,
        device_name: str | None = None,
        secret_hash: str | None = None,
        audit: Sequence[AuditEvent] = (),
        audit_as: str | None = None,
    ) -> ReplicaInfo:
        """Record a replica's enrolment (and ``audit`` on this store's own chain, in the
        same transaction); InvalidInputError for a replica id already known."""
        check_enrolment(replica_id, organisation, enrolled_by, device_name, secret_hash)
        events = check_audit_append(audit, audit_as)
        info = ReplicaInfo(
            replica_id,
            organisation,
            enrolled_by,
            self._now_ms(),
            None,
            None,
            device_name=device_name,
        )

        def job(raw: Conn) -> None:
            def body() -> None:
                if not raw.execute(
                    "INSERT INTO replicas (replica_id, organisation, enrolled_by, enrolled_ms,"
                    " device_name, secret_hash) VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (
                        replica_id,
                        organisation,
                        enrolled_by,
                        info.enrolled_ms,
                        device_name,
                        secret_hash,
                    ),
                ).rowcount:
                    raise enrolled_already(replica_id)
                if events:
                    append_own(raw, audit_as or self._own_id(raw), events, info.enrolled_ms)

            self._write(raw, body)

        await self._run(f"enrolling replica {replica_id!r}", job)
        return info

    async def get_replica(self, replica_id: str) -> ReplicaInfo | None:
        """An enrolled replica, or None."""
        check_text(replica_id, "replica_id")

        def job(raw: Conn) -> ReplicaInfo | None:
            row = raw.execute(
                f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE replica_id = %s", (replica_id,)
            ).fetchone()
            return None if row is None else ReplicaInfo(*row)

        return await self._run(f"reading replica {replica_id!r}", job)

    async def replica_secret_hash(self, replica_id: str) -> str | None:
        """The SHA-256 (hex) of the replica's secret, or None."""
        check_text(replica_id, "replica_id")

        def job(raw: Conn) -> str | None:
            row = raw.execute(
                "SELECT secret_hash FROM replicas WHERE replica_id = %s", (replica_id,)
            ).fetchone()
            return None if row is None or row[0] is None else str(row[0])

        return await self._run(f"reading replica {replica_id!r}", job)

    async def set_replica_secret_hash(self, replica_id: str, secret_hash: str) -> None:
        """Give a replica enrolled without a secret its first one; never replaces one."""
        check_secret_hash(replica_id, secret_hash)

        def job(raw: Conn) -> None:
            def body() -> None:
                changed = raw.execute(
                    "UPDATE replicas SET secret_hash = %s WHERE replica_id = %s"
                    " AND secret_hash IS NULL",
                    (secret_hash, replica_id),
                ).rowcount
                if not changed:
                    raise secret_refused(replica_id)

            self._write(raw, body)

        await self._run(f"updating replica {replica_id!r}", job)

    async def reissue_replica_secret(
        self,
        replica_id: str,
        *,
        organisation: str,
        enrolled_by: str,
        secret_hash: str,
        audit: Sequence[AuditEvent] = (),
        audit_as: str | None = None,
    ) -> bool:
        """A new secret for a replica of that organisation and account, never seen nor
        revoked (its sessions end, ``audit`` is appended, in one transaction); False,
        changing nothing, for any other."""
        check_reissue(replica_id, organisation, enrolled_by, secret_hash)
        events = check_audit_append(audit, audit_as)
        now = self._now_ms()

        def job(raw: Conn) -> bool:
            def body() -> bool:
                if not raw.execute(
                    "UPDATE replicas SET secret_hash = %s WHERE replica_id = %s"
                    " AND organisation = %s AND enrolled_by = %s"
                    " AND revoked_ms IS NULL AND last_seen_ms IS NULL",
                    (secret_hash, replica_id, organisation, enrolled_by),
                ).rowcount:
                    return False
                raw.execute("DELETE FROM sessions WHERE replica_id = %s", (replica_id,))
                bump_accounts_generation(raw)
                if events:
                    append_own(raw, audit_as or self._own_id(raw), events, now)
                return True

            return self._write(raw, body)

        return await self._run(f"updating replica {replica_id!r}", job)

    async def replicas(self, organisation: str | None = None) -> list[ReplicaInfo]:
        """Every enrolled replica (of that organisation), by id."""
        check_optional_text(organisation, "organisation")
        if organisation is None:
            sql = f"SELECT {_REPLICA_COLUMNS} FROM replicas ORDER BY replica_id"
            args: tuple[object, ...] = ()
        else:
            sql = (
                f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE organisation = %s"
                " ORDER BY replica_id"
            )
            args = (organisation,)
        return await self._run(
            "listing replicas", lambda raw: [ReplicaInfo(*r) for r in raw.execute(sql, args)]
        )

    async def touch_replica(
        self,
        replica_id: str,
        seen_ms: int | None = None,
        *,
        pending: int | None = None,
        oldest_pending_ms: int | None = None,
    ) -> None:
        """Note that a replica was seen now (or at ``seen_ms``), and what it reported."""
        check_text(replica_id, "replica_id")
        seen = self._now_ms() if seen_ms is None else check_count(seen_ms, "seen_ms")
        count, oldest = check_outbox_report(pending, oldest_pending_ms)
        if count is None:
            await self._update_replica(
                replica_id, "UPDATE replicas SET last_seen_ms = %s WHERE replica_id = %s", seen
            )
            return
        await self._update_replica(
            replica_id,
            "UPDATE replicas SET last_seen_ms = %s, pending = %s, oldest_pending_ms = %s"
            " WHERE replica_id = %s",
            seen,
            count,
            oldest,
        )

    async def revoke_replica(
        self, replica_id: str, *, audit: Sequence[AuditEvent] = (), audit_as: str | None = None
    ) -> bool:
        """Revoke a replica: it is locked at its next contact, and its sessions end now;
        ``audit`` is appended in the same transaction when this call revoked it.

        Revoking twice keeps the first time (and writes no entry); returns whether this
        call revoked it. Two processes revoking at once: the row lock lets one revoke.
        """
        check_text(replica_id, "replica_id")
        events = check_audit_append(audit, audit_as)
        now = self._now_ms()

        def job(raw: Conn) -> bool:
            def body() -> bool:
                row = raw.execute(
                    "SELECT revoked_ms FROM replicas WHERE replica_id = %s FOR UPDATE",
                    (replica_id,),
                ).fetchone()
                if row is None:
                    raise not_enrolled(replica_id)
                revoked = row[0] is None
                if revoked:
                    raw.execute(
                        "UPDATE replicas SET revoked_ms = %s WHERE replica_id = %s",
                        (now, replica_id),
                    )
                    if events:
                        append_own(raw, audit_as or self._own_id(raw), events, now)
                raw.execute("DELETE FROM sessions WHERE replica_id = %s", (replica_id,))
                bump_accounts_generation(raw)
                return revoked

            return self._write(raw, body)

        return await self._run(f"updating replica {replica_id!r}", job)

    async def _update_replica(
        self, replica_id: str, sql: str, *values: int | None, end_sessions: bool = False
    ) -> None:
        def job(raw: Conn) -> None:
            def body() -> None:
                if not raw.execute(sql, (*values, replica_id)).rowcount:
                    raise not_enrolled(replica_id)
                if end_sessions:
                    raw.execute("DELETE FROM sessions WHERE replica_id = %s", (replica_id,))
                    bump_accounts_generation(raw)

            self._write(raw, body)

        await self._run(f"updating replica {replica_id!r}", job)
