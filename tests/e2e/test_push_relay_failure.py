"""A push committed on the server is acknowledged even when relaying it live fails.

Real parts: a server on 127.0.0.1 (an SQLite file), a caresync laptop and a hand-driven
live subscriber over real websockets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.exceptions import StorageError
from caresync.protocol import LiveBatch, LiveUpdate


async def test_a_push_whose_live_relay_fails_is_acknowledged_and_relayed_with_the_next(
    tmp_path: Path,
) -> None:
    """Reproduced (the PostgreSQL review's note): the follower's relay after the commit
    reading the feed's epochs failed (the database away for a moment), and the push,
    committed, was refused as 'nothing was committed': the laptop kept it in its outbox
    and a person was told it was not stored."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    watcher = None
    try:
        record_id = await writer.create_record()
        await writer.sync()
        watcher = await Hostile.connect(server.url)
        await watcher.login("dr.b", PASSWORD, "clinic-a")
        await watcher.enrol("watches live")
        head = await server.store.feed_head()
        watcher.protocol.subscribe(head)

        follower = server._follower
        real = follower.committed
        failures = [StorageError("reading the feed's epochs: the database is away")]

        async def failing_once(items: Any) -> None:
            if failures:
                raise failures.pop()
            await real(items)

        follower.committed = failing_once  # type: ignore[method-assign]
        await writer.set(record_id, "weightKg", 70)
        report = await writer.sync()
        assert report.uploaded == 1  # acknowledged: it was committed
        assert (await writer.store.outbox_summary()).pending == 0
        assert not failures
        first = await server.store.feed_head()
        assert first == head + 1

        await writer.set(record_id, "weightKg", 71)
        await writer.sync()
        seqs: list[int] = []
        for _ in range(4):  # bounded: both entries, as one batch or two updates
            event = await watcher.next_event()
            if isinstance(event, LiveBatch):
                seqs.extend(item.seq for item in event.items)
            elif isinstance(event, LiveUpdate):
                seqs.append(event.seq)
            if len(seqs) >= 2:
                break
        assert seqs == [first, first + 1]  # the first went live with the next, ahead of it
    finally:
        if watcher is not None:
            await watcher.close()
        await writer.close()
        await server.close()
