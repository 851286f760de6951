"""A server's change feed, and the replica each Yjs client id is bound to."""

from __future__ import annotations

from collections.abc import Collection

from caresync.exceptions import CorruptDatabaseError
from caresync.storage._arguments import check_feed_epoch, check_feed_query
from caresync.storage.base import FeedEpoch, FeedItem, RecordClient, check_record_clients
from caresync.storage.postgres._sql import Conn, client_owners_of, feed_head
from caresync.storage.postgres.core import PostgresCore

__all__ = ["FeedPart"]


class FeedPart(PostgresCore):
    """A server's change feed, and the owners of Yjs client ids."""

    async def client_owners(self, clients: Collection[RecordClient]) -> dict[RecordClient, str]:
        """The replica each ``(record_id, client)`` pair is bound to (unbound ones are
        absent; see ``ServerStore.client_owners``)."""
        wanted = check_record_clients(clients)

        def job(raw: Conn) -> dict[RecordClient, str]:
            return client_owners_of(raw, wanted)

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
        still count as passed for a caller that checkpoints at the head). A
        feed row is visible once its transaction committed, and transactions
        that write the feed commit in the order of their numbers (the feed
        lock), so a reader never sees a number before a smaller one.
        """
        check_feed_query(after_seq, limit, organisation, exclude_origin)
        where = ["f.seq > %s"]
        args: list[object] = [after_seq]
        if organisation is not None:
            where.append("f.organisation = %s")
            args.append(organisation)
        if exclude_origin is not None:
            where.append("f.origin IS DISTINCT FROM %s")  # rows of no origin are kept
            args.append(exclude_origin)
        sql = (
            "SELECT f.seq, r.record_id, f.data, f.organisation, f.origin FROM feed f"
            f" LEFT JOIN records r ON r.rk = f.rk WHERE {' AND '.join(where)}"
            " ORDER BY f.seq LIMIT %s"
        )
        args.append(limit)

        def job(raw: Conn) -> list[FeedItem]:
            items = [FeedItem(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in raw.execute(sql, args)]
            if any(item.record_id is None for item in items):
                raise CorruptDatabaseError("the change feed holds a row of no record; run check()")
            return items

        return await self._run("reading the change feed", job)

    async def feed_head(self) -> int:
        """The highest change-feed number given out (0 when the feed is empty)."""
        return await self._run("reading the change feed", feed_head)

    async def feed_epochs(self) -> list[FeedEpoch]:
        """Every feed epoch begun, by ascending first number."""

        def job(raw: Conn) -> list[FeedEpoch]:
            rows = raw.execute("SELECT first_seq, epoch FROM feed_epochs ORDER BY first_seq")
            return [FeedEpoch(int(first), int(epoch)) for first, epoch in rows]

        return await self._run("reading the change feed's epochs", job)

    async def begin_feed_epoch(self, epoch: int) -> FeedEpoch:
        """Label the feed numbers from the head + 1 on with ``epoch`` (committed), under
        the feed lock: no other process gives out a number meanwhile."""
        check_feed_epoch(epoch)

        def job(raw: Conn) -> FeedEpoch:
            def body() -> FeedEpoch:
                begun = FeedEpoch(feed_head(raw) + 1, epoch)
                raw.execute(
                    "INSERT INTO feed_epochs (first_seq, epoch) VALUES (%s, %s)"
                    " ON CONFLICT (first_seq) DO UPDATE SET epoch = EXCLUDED.epoch",
                    begun,
                )
                return begun

            return self._write(raw, body, records=True)

        return await self._run("beginning a change-feed epoch", job)
