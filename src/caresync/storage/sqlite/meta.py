"""The replica's identity and its settings and checkpoints (meta)."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractAsyncContextManager

from caresync.storage._arguments import check_meta
from caresync.storage._writes import check_rebind
from caresync.storage.base import Identity, check_text
from caresync.storage.sqlite._sql import _put_meta, _read_identity
from caresync.storage.sqlite.core import SQLiteCore

__all__ = ["MetaPart", "sql_meta"]


def sql_meta(raw: sqlite3.Connection, key: str) -> str | None:
    """A stored setting or checkpoint, or None."""
    row = raw.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


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

        return await self._run(f"reading meta {key!r}", lambda raw: sql_meta(raw, key), brief=True)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a setting or checkpoint, committed before returning."""
        check_meta(key, value)

        def job(raw: sqlite3.Connection) -> None:
            self._write(raw, lambda: _put_meta(raw, key, value))

        await self._run(f"storing meta {key!r}", job)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is stored; returns the stored value."""
        check_meta(key, value)

        def job(raw: sqlite3.Connection) -> str:
            def body() -> str:
                raw.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
                row = raw.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                return value if row is None else str(row[0])

            return self._write(raw, body)

        return await self._run(f"storing meta {key!r}", job)

    @property
    def shared(self) -> bool:
        """False: a server's SQLite database is written by that one process."""
        return False

    def exclusive_commits(self) -> AbstractAsyncContextManager[None]:
        """A process-local lock (see ``ServerStore.exclusive_commits``)."""
        return self._commits.exclusive()

    def hub_sending(self, record_id: str) -> AbstractAsyncContextManager[bool]:
        """A process-local claim (see ``ServerStore.hub_sending``): one process sends."""
        return self._commits.hub_sending(record_id)

    async def wait_for_feed(self, timeout_s: float) -> bool:
        """Until this store's feed gained an entry since the last wait, or the timeout."""
        return await self._commits.wait(timeout_s)
