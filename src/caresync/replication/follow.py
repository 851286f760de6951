"""Keeping one server process in step with the feed every process on its database writes.

Theory of operation
-------------------
Several server processes may share one database (PostgreSQL). Each keeps
records loaded in memory (:class:`~caresync.replication.pool.RecordPool`) and
relays feed entries live to its own connections. :class:`FeedFollower` holds
``seen``, the highest feed seq this process has accounted for: every entry up
to it was relayed here (or was this process's own commit, relayed as it
committed) and its record evicted from the pool if another process wrote it.

:meth:`FeedFollower.catch_up` reads the feed after ``seen`` (in pages, bounded)
and hands each page to ``relay``, in seq order. A server calls it under its
commit lock, so its own commits and what it catches up are relayed in one
order, and no entry is relayed twice: an entry is relayed only when its seq is
above ``seen``, which only grows. It runs before every push (inside the store's
exclusive commit section, so the pool is current when the push is merged), and
whenever the store signals a feed write or a poll interval passes (a lost
notification is recovered by the next read). Nothing here depends on a signal
arriving: the signal only makes relaying prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from caresync.replication.pool import RecordPool
from caresync.storage import FeedItem, ServerStore

__all__ = ["FEED_PAGE", "FeedFollower"]

FEED_PAGE = 1000
"""Feed entries read at once."""

logger = logging.getLogger("caresync.server")


class FeedFollower:
    """The feed seq one server process has accounted for, and how it catches up."""

    def __init__(
        self,
        store: ServerStore,
        pool: RecordPool,
        relay: Callable[[Sequence[FeedItem]], None],
        prepare: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.relay = relay
        self.prepare = prepare
        """Awaited with the last seq of entries about to be relayed (the server makes
        sure it knows their feed epochs), or None."""
        self.seen: int | None = None
        """The highest feed seq relayed here, or None before :meth:`start`."""

    async def start(self) -> int:
        """Begin at the feed's head (what came before is pulled, not relayed live)."""
        if self.seen is None:
            self.seen = await self.store.feed_head()
            self.pool.clear()  # loaded before we knew the head: possibly stale
        return self.seen

    async def catch_up(self, *, max_pages: int = 100) -> bool:
        """Relay, and evict from the pool, what the feed holds after ``seen``.

        Reads at most ``max_pages`` pages; True if it stopped with more to read.
        The caller holds the server's commit lock.
        """
        after = await self.start()
        for _ in range(max_pages):
            items = await self.store.feed_since(after, limit=FEED_PAGE)
            if not items:
                return False
            for item in items:
                self.pool.forget(item.record_id)  # another process changed it
            last = items[-1].seq
            # Ready to relay before the mark moves: a failure here (the database away)
            # leaves these entries to the next round. Moved first, they were passed by
            # unrelayed, and a live laptop's checkpoint moved past them with the next.
            await self._prepare(last)
            self.seen = after = last
            self.relay(items)
            if len(items) < FEED_PAGE:
                return False
        return True

    async def committed(self, items: Sequence[FeedItem]) -> None:
        """This process committed ``items`` (in seq order): relay them, after any entry
        another process slipped in before them (none, inside an exclusive section)."""
        if not items:
            return
        after = await self.start()
        await self._prepare(items[-1].seq)
        first = items[0].seq
        if first > after + 1:
            gap = await self.store.feed_since(after, limit=first - after - 1)
            gap = [item for item in gap if item.seq < first]
            for item in gap:
                self.pool.forget(item.record_id)
            if gap:
                logger.warning("feed entries %d..%d came outside the lock", after + 1, first - 1)
                self.relay(gap)
        fresh = [item for item in items if item.seq > after]
        if fresh:
            self.relay(fresh)
            self.seen = max(after, fresh[-1].seq)

    async def _prepare(self, seq: int) -> None:
        if self.prepare is not None:
            await self.prepare(seq)
