"""A laptop that stops reading its live updates cannot hold the server's memory: once
more than the bound waits for it, its queue is dropped and its connection closed; the
laptop pulls from its checkpoint when it comes back, and nothing is lost.

Real parts: a SyncServer on an in-memory store, reached over in-memory channels; the
slow laptop's side of the channel stops taking frames (as a socket whose peer stopped
reading does), and the test waits on the events that mean each step happened.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from argon2 import PasswordHasher
from tests.e2e.hostile import Hostile, closed_by_server

from caresync.protocol import PullBatch, PushAck
from caresync.records import Record
from caresync.server import SyncServer
from caresync.storage import IncomingUpdate, MemoryStore
from caresync.transport import Channel, MemoryListener

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ORG = "clinic"
PASSWORD = "a passphrase"
BOUND = 5
LIMIT_S = 20.0


class StallingChannel:
    """A server-side channel whose sends block, once stalled, until it is closed."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.stalled = False
        self.blocked = asyncio.Event()  # a send is waiting on the stall
        self._closed = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def send(self, frame: bytes) -> None:
        if self.stalled:
            self.blocked.set()
            await self._closed.wait()
        await self.inner.send(frame)

    async def recv(self) -> bytes:
        return await self.inner.recv()

    async def close(self, reason: str = "") -> None:
        self._closed.set()
        await self.inner.close(reason)


@pytest.mark.parametrize("bound", ["entries", "bytes"])
async def test_a_laptop_that_stops_reading_is_dropped_and_pulls_what_it_missed(
    caplog: pytest.LogCaptureFixture, bound: str
) -> None:
    note = "x" * 2_000  # each pushed update is about 2 KB
    limits = {"live_queue_entries": BOUND} if bound == "entries" else {"live_queue_bytes": 9_000}
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP, **limits)  # type: ignore[arg-type]
    await server.add_user(ORG, "dr.a", PASSWORD)
    await server.add_user(ORG, "dr.b", PASSWORD)
    server_sides: list[StallingChannel] = []

    async def handle(channel: Channel) -> None:
        wrapped = StallingChannel(channel)
        server_sides.append(wrapped)
        await server.handle(wrapped)  # type: ignore[arg-type]

    def dropped() -> float | None:
        return server.metrics.registry.get_sample_value("caresync_live_dropped_total")

    listener = MemoryListener(handle)
    caplog.set_level(logging.WARNING, logger="caresync.server")
    slow = await Hostile.over(await listener.connect())
    writer = await Hostile.over(await listener.connect())
    try:
        session = await slow.login("dr.a", PASSWORD, ORG)
        enrolled = await slow.enrol("slow")
        slow.protocol.subscribe(0)
        for frame in slow.protocol.data_to_send():
            await slow.channel.send(frame)
        await writer.login("dr.b", PASSWORD, ORG)
        await writer.enrol("writer")
        slow_side = server_sides[0]
        pushed: list[str] = []

        async def push_one(seq: int) -> int:
            record = Record.create(replica=writer.replica_id)
            record.set("name", f"patient {seq}", author="dr.b")
            record.set("note", note, author="dr.b")
            update = record.update_since()
            assert await writer.push(seq, record.record_id, update) == PushAck(seq)
            pushed.append(record.record_id)
            return len(update)

        await push_one(1)  # reaches the slow laptop
        slow_side.stalled = True  # then it stops reading
        await push_one(2)  # its live frame is stuck in the send
        async with asyncio.timeout(LIMIT_S):
            await slow_side.blocked.wait()
        # Queued from here; the push that would take the queue past the bound drops it.
        queued_bytes = 0
        seq = 3
        for seq in range(3, 40):
            assert dropped() == 0, f"dropped before the bound, at push {seq}"
            queued_bytes += await push_one(seq)
            queued_entries = seq - 2
            if queued_entries > server.live_queue_entries or queued_bytes > server.live_queue_bytes:
                break
        assert dropped() == 1, f"not dropped at push {seq}, past the bound"
        assert seq > 3  # something was queued before the bound was reached
        assert await closed_by_server(slow.channel)
        assert any("dropped the live connection" in r.message for r in caplog.records)

        # The writer's session goes on, and the slow laptop catches up by pulling.
        await push_one(seq + 1)
        assert dropped() == 1
        back = await Hostile.over(
            await listener.connect(),
            replica_id=enrolled.replica_id,
            server_id=enrolled.server_id,
            organisation=ORG,
        )
        try:
            await back.resume(session.session_token, enrolled.replica_secret)
            back.protocol.request_pull(0, 1000)
            batch = await back.expect(PullBatch)
            assert isinstance(batch, PullBatch)
            assert [item.record_id for item in batch.items] == pushed
        finally:
            await back.close()
    finally:
        await writer.close()
        await slow.close()
        await listener.close()
        await server.close()


def test_the_bounds_must_be_positive_integers() -> None:
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="live_queue_entries"):
            SyncServer(MemoryStore(), "s", live_queue_entries=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="live_queue_bytes"):
            SyncServer(MemoryStore(), "s", live_queue_bytes=bad)  # type: ignore[arg-type]


async def test_a_subscribe_from_far_behind_is_sent_a_chunk_at_a_time() -> None:
    """A laptop that subscribes from far behind (an authenticated colleague too, who may
    name any checkpoint) is sent its backlog a chunk at a time, each before the next is
    read: the server holds one chunk's frames, not the organisation's whole feed
    (reproduced: every chunk was read and encoded before the first was sent)."""
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", PASSWORD)
    for _batch in range(5):  # 2,500 feed entries: three chunks of a backlog
        records = [Record.create(replica="register") for _ in range(500)]
        await server.store.write_remote(
            [IncomingUpdate(r.record_id, r.update_since(), None, ORG) for r in records],
            to_feed=True,
        )
    reads: list[int] = []
    feed_since = server.store.feed_since

    async def counted_feed_since(after: int, **kwargs: Any) -> Any:
        reads.append(after)
        return await feed_since(after, **kwargs)

    server.store.feed_since = counted_feed_since  # type: ignore[method-assign]
    server_sides: list[StallingChannel] = []

    async def handle(channel: Channel) -> None:
        wrapped = StallingChannel(channel)
        server_sides.append(wrapped)
        await server.handle(wrapped)  # type: ignore[arg-type]

    listener = MemoryListener(handle)
    laptop = await Hostile.over(await listener.connect())
    try:
        await laptop.login("dr.a", PASSWORD, ORG)
        await laptop.enrol("far-behind")
        server_sides[0].stalled = True  # it reads nothing more: every send waits
        reads.clear()
        laptop.protocol.subscribe(0)
        for frame in laptop.protocol.data_to_send():
            await laptop.channel.send(frame)
        async with asyncio.timeout(LIMIT_S):
            await server_sides[0].blocked.wait()
        assert reads == [0]  # the first chunk waits to be sent; the next is not read yet
    finally:
        for side in server_sides:
            await side.close()  # its stalled send ends
        await laptop.close()
        await listener.close()
