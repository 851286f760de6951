"""The replica's identity and its settings and checkpoints (meta)."""

from __future__ import annotations

import sqlite3

from caresync.storage._arguments import check_meta
from caresync.storage._writes import check_rebind
from caresync.storage.base import Identity, check_text
from caresync.storage.sqlite._sql import _put_meta, _read_identity
from caresync.storage.sqlite.core import SQLiteCore

__all__ = ["MetaPart"]


class MetaPart(SQLiteCore):
    """The replica's identity, settings and checkpoints."""

    async def get_identity(self) -> Identity | None:
        """This replica's identity, or None before it is set."""
        return await self._run("reading the identity", _read_identity)

    async def set_identity(self, identity: Identity) -> None:
        """Store the identity; refuses to rebind the replica (see :class:`Identity`)."""

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                check_rebind(_read_identity(raw), identity)
                raw.execute(
                    "INSERT OR REPLACE INTO identity (singleton, replica_id, role, server_id,"
                    " server_url, organisation) VALUES (1, ?, ?, ?, ?, ?)",
                    (
                        identity.replica_id,
                        identity.role,
                        identity.server_id,
                        identity.server_url,
                        identity.organisation,
                    ),
                )

            self._write(raw, body)

        check_rebind(None, identity)
        await self._run("storing the identity", job)

    async def get_meta(self, key: str) -> str | None:
        """A stored setting or checkpoint, or None."""
        check_text(key, "meta key")

        def job(raw: sqlite3.Connection) -> str | None:
            row = raw.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(f"reading meta {key!r}", job)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a setting or checkpoint, committed before returning."""
        check_meta(key, value)

        def job(raw: sqlite3.Connection) -> None:
            self._write(raw, lambda: _put_meta(raw, key, value))

        await self._run(f"storing meta {key!r}", job)
