"""Review of "brief reads" (session 20): the laptop's ``make_durable`` skips the store
when no lazy take_in happened since the last one began. A take_in that commits after
a make_durable began (it waited for the write lock, or read the held states first) must
still be synced by the next make_durable: a live delayed sync that ran meanwhile, and
live mode's end, would otherwise leave the batch unsynced for ever (until some other
durable commit), against "synced within a second live"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.live_helpers import LIMIT_S, enrolled, start_server

from caresync.replica import Replica
from caresync.replication import meta
from caresync.storage import SQLiteStore


def _store(replica: Replica) -> SQLiteStore:
    store = replica.store
    assert isinstance(store, SQLiteStore)
    return store


async def _an_update(writer: Replica) -> list[tuple[str, bytes]]:
    """One update of a new record, as the server would send it to another laptop."""
    record_id = await writer.create_record()
    await writer.set(record_id, "name", "Awa Ndiaye", author="dr.a")
    return [(e.record_id, e.update) for e in await writer.store.pending(10)]


async def test_a_take_in_committed_after_a_make_durable_began_is_synced_by_the_next(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b")
    try:
        updates = await _an_update(writer)
        host, store = reader._host, _store(reader)
        assert not store._unsynced  # the enrolment left nothing waiting for the disk
        async with asyncio.timeout(LIMIT_S):
            # A local edit holds the write lock: the take_in has said it may leave a
            # lazy commit, but waits for the lock before committing.
            async with reader._write_lock:
                taking = asyncio.create_task(
                    host.take_in(updates, checkpoint=(meta.CHECKPOINT, "1"))
                )
                await asyncio.sleep(0)  # one turn: the task's first step, to the lock
                assert host._maybe_unsynced
                assert not taking.done()
                await host.make_durable()  # began (and ended) before the commit
            await taking
            assert store._unsynced  # committed lazily, not yet on disk
            await host.make_durable()
        assert not store._unsynced  # the next make_durable synced it
    finally:
        await writer.close()
        await reader.close()
        await server.close()


async def test_a_make_durable_with_nothing_taken_in_asks_the_store_nothing(
    tmp_path: Path,
) -> None:
    """The saving the change was for still holds: after a synced take_in, nothing."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b")
    store = _store(reader)
    real = store.make_durable
    asked: list[None] = []

    async def counted() -> None:
        asked.append(None)
        await real()

    try:
        updates = await _an_update(writer)
        host = reader._host
        async with asyncio.timeout(LIMIT_S):
            await host.take_in(updates, checkpoint=(meta.CHECKPOINT, "1"))
            store.make_durable = counted  # type: ignore[method-assign]
            await host.make_durable()
            assert (len(asked), store._unsynced) == (1, False)
            await host.make_durable()  # nothing taken in since
        assert len(asked) == 1
    finally:
        store.make_durable = real  # type: ignore[method-assign]
        await writer.close()
        await reader.close()
        await server.close()
