"""A server process following the feed other processes write, when the database fails
it part-way: nothing another process committed may be passed by without being relayed
to its live laptops (a live laptop's checkpoint moves with what it is sent, so an entry
passed by is one it never pulls). Two SyncServers in this process on one PostgreSQL
database, as two `caresync serve` processes; real websockets on 127.0.0.1. Needs
PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from tests.e2e.live_helpers import PASSWORD, live, until, watch
from tests.postgres import fresh_schema

from caresync.replica import Replica, ReplicaState
from caresync.server import SyncServer

LIMIT_S = 30.0


@pytest.fixture
async def clinic_url(postgres_database: str) -> AsyncIterator[str]:
    """A schema of this test's own, with accounts in clinic-a."""
    async with fresh_schema(postgres_database) as url:
        async with await SyncServer.open(url) as first:
            for user in ("dr.a", "dr.b"):
                await first.add_user("clinic-a", user, PASSWORD)
        yield url


async def enrolled(tmp_path: Path, server: SyncServer, name: str, user: str) -> Replica:
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic-a")
    return laptop


class _Noted(logging.Handler):
    """Sets an event when a record whose message holds ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_a_feed_read_that_fails_half_way_passes_no_entry_by_unrelayed(
    tmp_path: Path, clinic_url: str
) -> None:
    """Reproduced: B's follower read A's entry from the feed, moved its mark past it,
    then failed to read the feed's epochs (the database away for a moment: here, a lock
    held on feed_epochs past B's lock_timeout) before relaying it. The entry was never
    sent to B's live laptop, whose checkpoint then moved past it with A's next entry:
    the laptop never had the first edit. Now the mark moves only once the entries are
    relayed, and the next round relays them."""
    # B waits at most 300 ms for a lock (feed_epochs, held below); A waits as long as it takes.
    b_url = clinic_url.replace("options=", "options=-clock_timeout%3D300%20", 1)
    a = await SyncServer.open(clinic_url)
    await a.serve("127.0.0.1", 0)
    b = await SyncServer.open(b_url, feed_poll_s=0.2)
    await b.serve("127.0.0.1", 0)
    failed = _Noted("could not follow the change feed")
    server_log = logging.getLogger("caresync.server")
    server_log.addHandler(failed)
    try:
        writer = await enrolled(tmp_path, a, "writer", "dr.a")
        reader = await enrolled(tmp_path, b, "reader", "dr.b")
        record_id = await writer.create_record()
        await writer.sync()
        await reader.sync()
        signal = watch(reader)
        async with live(reader) as run:
            await run.states.reach(ReplicaState.ONLINE)
            # B has handled the Subscribe once it acknowledges a push sent after it.
            await reader.set(record_id, "heightCm", 180)

            async def acknowledged() -> bool:
                return (await reader.status()).pending == 0

            async with asyncio.timeout(LIMIT_S):
                await until(acknowledged, signal)
            connecting = psycopg.AsyncConnection.connect(clinic_url)
            async with await connecting as admin, admin.transaction():
                await admin.execute("LOCK TABLE feed_epochs IN ACCESS EXCLUSIVE MODE")
                # A commits (its own relay then waits for the lock: in a task).
                await writer.set(record_id, "weightKg", 71)
                pushing = asyncio.create_task(writer.sync())
                async with asyncio.timeout(LIMIT_S):
                    await failed.event.wait()  # B read A's entry, then failed
            async with asyncio.timeout(LIMIT_S):
                await pushing
            # A's next entry reaches the reader live; the one before it must have too.
            await writer.set(record_id, "pulse", 64)
            await writer.sync()
            async with asyncio.timeout(LIMIT_S):

                async def has_pulse() -> bool:
                    return (await reader.record(record_id, audited=False)).value("pulse") == 64

                await until(has_pulse, signal)
            view = await reader.record(record_id, audited=False)
            assert view.value("weightKg") == 71
        await writer.close()
        await reader.close()
    finally:
        server_log.removeHandler(failed)
        await a.close()
        await b.close()
