"""A server's change feed, and the replica each Yjs client id is bound to."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from caresync.exceptions import CorruptDatabaseError
from caresync.storage._arguments import check_feed_epoch, check_feed_query
from caresync.storage.base import (
    FeedEpoch,
    FeedItem,
    RecordClient,
    check_record_clients,
)
from caresync.storage.sqlite._sql import _IN_CHUNK, _client_owners, _feed_head, _marks
from caresync.storage.sqlite.core import SQLiteCore

__all__ = ["FeedPart"]

_tuple_new: Any = tuple.__new__  # cls(*fields) of a named tuple cls, in one C call


class FeedPart(SQLiteCore):
    """A server's change feed, and the owners of Yjs client ids."""

    async def client_owners(self, clients: Collection[RecordClient]) -> dict[RecordClient, str]:
        """The replica each ``(record_id, client)`` pair is bound to (unbound ones are
        absent; see ``ServerStore.client_owners``)."""
        wanted = check_record_clients(clients)

        def job(raw: sqlite3.Connection) -> dict[RecordClient, str]:
            return _client_owners(raw, wanted)

        return await self._run("reading Yjs client owners", job)

    async def feed_since(
        self,
        after_seq: int,
        *,
        limit: int,
        organisation: str | None = None,
        exclude_origin: str | None = None,
    ) -> list[FeedItem]:
        """Change-feed items with seq > ``after_seq``, in order, at most ``limit``.

        ``exclude_origin`` leaves out items written with that origin (they
        still count as passed for a caller that checkpoints at the head).
        """
        check_feed_query(after_seq, limit, organisation, exclude_origin)
        where = ["seq > ?"]
        args: list[object] = [after_seq]
        if organisation is not None:
            where.insert(0, "organisation = ?")
            args.insert(0, organisation)
        if exclude_origin is not None:
            where.append("origin IS NOT ?")  # rows of no origin are kept
            args.append(exclude_origin)
        # A row names its record by key: the ids of keys not known here (committed
        # pairs, see SQLiteCore._name) are read from records_by_key, in one pass.
        sql = (
            "SELECT seq, rk, data, organisation, origin FROM feed"
            f" WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        )
        args.append(limit)

        def job(raw: sqlite3.Connection) -> list[FeedItem]:
            rows = raw.execute(sql, args).fetchall()
            names = self._names
            found: dict[int, str] = {}
            unknown: list[int] = []
            keys = {row[1] for row in rows}
            for key in keys:
                name = names.get(key)
                if name is None:
                    unknown.append(key)
                else:
                    found[key] = name
            for start in range(0, len(unknown), _IN_CHUNK):
                chunk = unknown[start : start + _IN_CHUNK]
                found.update(
                    raw.execute(
                        f"SELECT rk, record_id FROM records WHERE rk IN ({_marks(len(chunk))})",
                        chunk,
                    )
                )
            if unknown:
                self._name((key, found[key]) for key in unknown if key in found)
            if len(found) < len(keys):
                raise CorruptDatabaseError("the change feed holds a row of no record; run check()")
            # FeedItem(...) in one C call each (a pull reads a thousand).
            make = _tuple_new
            return [make(FeedItem, (r[0], found[r[1]], bytes(r[2]), r[3], r[4])) for r in rows]

        return await self._run("reading the change feed", job)

    async def feed_head(self) -> int:
        """The highest change-feed number given out (0 when the feed is empty)."""
        return await self._run("reading the change feed", _feed_head, brief=True)

    async def feed_epochs(self) -> list[FeedEpoch]:
        """Every feed epoch begun, by ascending first number."""

        def job(raw: sqlite3.Connection) -> list[FeedEpoch]:
            rows = raw.execute("SELECT first_seq, epoch FROM feed_epochs ORDER BY first_seq")
            return [FeedEpoch(int(first), int(epoch)) for first, epoch in rows]

        return await self._run("reading the change feed's epochs", job, brief=True)

    async def begin_feed_epoch(self, epoch: int) -> FeedEpoch:
        """Label the feed numbers from the head + 1 on with ``epoch`` (committed)."""
        check_feed_epoch(epoch)

        def job(raw: sqlite3.Connection) -> FeedEpoch:
            def body() -> FeedEpoch:
                begun = FeedEpoch(_feed_head(raw) + 1, epoch)
                raw.execute(
                    "INSERT OR REPLACE INTO feed_epochs (first_seq, epoch) VALUES (?, ?)", begun
                )
                return begun

            return self._write(raw, body)

        return await self._run("beginning a change-feed epoch", job)
