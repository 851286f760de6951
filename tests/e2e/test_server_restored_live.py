"""A laptop in live mode when its server is restored from an older backup: it
reconnects, puts the server right, and skips none of the entries written since.

Live entries carry their feed epoch (protocol version 14), so the checkpoint a live
laptop keeps is labelled like a pulled one; the round it runs before subscribing again
meets the restored server's refusal and recovers. Real parts: a server on an SQLite
file and 127.0.0.1, stopped, its file replaced by a ``caresync backup`` copy, started
again on the same port while the laptop keeps trying to reconnect.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.live_helpers import PASSWORD, enrolled, live, until, watch
from tests.e2e.restore_helpers import back_up, port_of, put_back, serve

from caresync.records.record import Record
from caresync.replica import Replica
from caresync.replication.epochs import FeedPosition
from caresync.replication.status import ReplicaState

LIMIT_S = 60  # far above what each step takes; a bound, not a pace


async def _weights(replica: Replica, record_id: str) -> list[object]:
    record = await replica.record(record_id, audited=False)
    return sorted(str(revision.value) for revision in record.history("weightKg"))


async def test_a_live_laptop_recovers_from_a_restored_server_and_skips_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    port = port_of(server)
    writer = await enrolled(tmp_path, server, "writer", user="dr.a")
    watcher = await enrolled(tmp_path, server, "watcher", user="dr.b")
    try:
        chart = await writer.create_record()
        await writer.set(chart, "name", "Awa Diop", author="dr.a")
        await writer.sync()
        await back_up(path, saved)
        signal = watch(writer, watcher)
        async with live(watcher) as run:
            async with asyncio.timeout(LIMIT_S):
                await run.states.reach(ReplicaState.ONLINE)
            for kg in (60, 61, 62):
                await writer.set(chart, "weightKg", kg, author="dr.a")
            await writer.sync()
            await watcher.set(chart, "note", "seen live", author="dr.b")  # pushed live
            head = await server.store.feed_head()

            async def read_live() -> bool:
                held = FeedPosition.parse(await watcher.store.get_meta("sync.checkpoint"))
                return held.seq == head and (await watcher.status()).pending == 0

            async with asyncio.timeout(LIMIT_S):
                await until(read_live, signal)
            held = FeedPosition.parse(await watcher.store.get_meta("sync.checkpoint"))
            assert held.epoch is not None  # live entries came with their epoch

            await server.close()  # the watcher goes offline and keeps trying
            await put_back(saved, path)
            server = await serve(path, port)
            assert await server.store.feed_head() < head
            # New entries take the numbers the watcher read before the restore.
            for kg in (70, 71, 72, 73, 74):
                await writer.set(chart, "weightKg", kg, author="dr.a")
            report = await writer.sync()
            assert report.server_went_back  # the writer read past the backup too
            server.on_commit.append(signal)

            async def caught_up() -> bool:
                return len(await _weights(watcher, chart)) == 8

            async with asyncio.timeout(LIMIT_S):
                await run.states.reach(ReplicaState.ONLINE, times=2)
                await until(caught_up, signal)
            assert await _weights(watcher, chart) == [
                "60",
                "61",
                "62",
                "70",
                "71",
                "72",
                "73",
                "74",
            ]

            async def server_has_the_note() -> bool:
                stored = await server.store.load(chart)
                if stored is None:
                    return False
                record = Record.from_update(chart, stored, replica="reader")
                return record.value("note") == "seen live"

            async with asyncio.timeout(LIMIT_S):
                await until(server_has_the_note, signal)
    finally:
        await writer.close()
        await watcher.close()
        await server.close()
