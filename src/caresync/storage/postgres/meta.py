"""The replica's identity and its settings and checkpoints (meta)."""

from __future__ import annotations

from caresync.storage._arguments import check_meta
from caresync.storage._writes import check_rebind
from caresync.storage.base import Identity, check_text
from caresync.storage.postgres._sql import Conn, put_meta, read_identity
from caresync.storage.postgres.core import PostgresCore

__all__ = ["MetaPart"]


class MetaPart(PostgresCore):
    """The replica's identity, settings and checkpoints."""

    async def get_identity(self) -> Identity | None:
        """This replica's identity, or None before it is set."""
        return await self._run("reading the identity", read_identity)

    async def set_identity(self, identity: Identity) -> None:
        """Store the identity; refuses to rebind the replica (see :class:`Identity`)."""
        check_rebind(None, identity)

        def job(raw: Conn) -> None:
            def body() -> None:
                # Locked: two server processes starting together agree on one identity.
                raw.execute("LOCK TABLE identity IN EXCLUSIVE MODE")
                check_rebind(read_identity(raw), identity)
                raw.execute(
                    "INSERT INTO identity (singleton, replica_id, role, server_id, server_url,"
                    " organisation) VALUES (1, %s, %s, %s, %s, %s) ON CONFLICT (singleton)"
                    " DO UPDATE SET replica_id = excluded.replica_id, role = excluded.role,"
                    " server_id = excluded.server_id, server_url = excluded.server_url,"
                    " organisation = excluded.organisation",
                    (
                        identity.replica_id,
                        identity.role,
                        identity.server_id,
                        identity.server_url,
                        identity.organisation,
                    ),
                )

            self._write(raw, body)

        await self._run("storing the identity", job)

    async def get_meta(self, key: str) -> str | None:
        """A stored setting or checkpoint, or None."""
        check_text(key, "meta key")

        def job(raw: Conn) -> str | None:
            row = raw.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(f"reading meta {key!r}", job)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a setting or checkpoint, committed before returning."""
        check_meta(key, value)

        def job(raw: Conn) -> None:
            self._write(raw, lambda: put_meta(raw, key, value))

        await self._run(f"storing meta {key!r}", job)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is stored; returns the stored value.

        Race-free across processes: the insert waits for another's uncommitted one
        on the same key, then keeps it."""
        check_meta(key, value)

        def job(raw: Conn) -> str:
            def body() -> str:
                raw.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                    (key, value),
                )
                row = raw.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
                return value if row is None else str(row[0])

            return self._write(raw, body)

        return await self._run(f"storing meta {key!r}", job)
