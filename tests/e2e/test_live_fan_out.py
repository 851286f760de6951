"""The live fan-out: one encoding of an edit for every connection that gets it, written at
once to connections with nothing waiting, yet each laptop gets exactly its entries, and a
laptop that stops reading is still bounded (its channel fills, then its queue, then it is
dropped).

Real parts: a SyncServer on an in-memory store, reached over in-memory channels (which,
like websockets' channels, take frames without waiting while their buffer has room).
Every wait is on an event or a reply, bounded in time.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from argon2 import PasswordHasher
from tests.e2e.hostile import Hostile, closed_by_server

from caresync.exceptions import StorageError
from caresync.protocol import (
    MIN_MAX_FRAME_BYTES,
    ClientProtocol,
    HubReport,
    LiveBatch,
    LiveUpdate,
    PullBatch,
    PushAck,
    ServerProof,
    ServerProtocol,
    Welcome,
)
from caresync.records import Record
from caresync.server import SyncServer
from caresync.storage import FeedItem, MemoryStore
from caresync.transport import MemoryListener

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ORG = "clinic"
PASSWORD = "a passphrase"
LAPTOPS = 5
LIMIT_S = 20.0


def live_entries(events: list[object]) -> list[tuple[int, str]]:
    """The (seq, record id) of every live entry among ``events``, in order."""
    found: list[tuple[int, str]] = []
    for event in events:
        if isinstance(event, LiveUpdate):
            found.append((event.seq, event.record_id))
        elif isinstance(event, LiveBatch):
            found.extend((item.seq, item.record_id) for item in event.items)
    return found


async def push_one(laptop: Hostile, seq: int, note: str = "") -> tuple[str, int]:
    """Push a new record; its id and update size once acknowledged (live entries that
    arrive meanwhile are kept in ``laptop.events``)."""
    record = Record.create(replica=laptop.replica_id)
    record.set("name", f"patient {seq}", author="dr.a")
    if note:
        record.set("note", note, author="dr.a")
    update = record.update_since()
    laptop.protocol.push([(seq, record.record_id, update)])
    kept: list[object] = []
    async with asyncio.timeout(LIMIT_S):
        for _ in range(1000):
            event = await laptop.next_event()
            if isinstance(event, PushAck):
                break
            kept.append(event)
    assert event == PushAck(seq)
    laptop.events[:0] = kept
    return record.record_id, len(update)


async def next_live(laptop: Hostile) -> tuple[int, str]:
    """The next live entry this laptop receives (a pull's HubReport is passed over)."""
    for _ in range(10):
        event = laptop.events.pop(0) if laptop.events else await laptop.next_event()
        if isinstance(event, HubReport):
            continue
        found = live_entries([event])
        assert len(found) == 1, event
        return found[0]
    raise AssertionError("no live entry among 10 events")


async def subscribed(laptop: Hostile) -> None:
    """Subscribe, then a round trip on the same connection: the server has taken the
    Subscribe once the pull is answered (it reads each connection's frames in order)."""
    laptop.protocol.subscribe(0)
    laptop.protocol.request_pull(0, 10)
    assert isinstance(await laptop.expect(PullBatch), PullBatch)


async def test_one_encoding_is_shared_yet_each_laptop_gets_exactly_its_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encodings: list[int] = []
    original = ServerProtocol.encode_live

    def counted(self: ServerProtocol, *args: Any, **kwargs: Any) -> tuple[bytes, ...]:
        encodings.append(id(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ServerProtocol, "encode_live", counted)
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", PASSWORD)
    listener = MemoryListener(server.handle)
    laptops: list[Hostile] = []
    try:
        for k in range(LAPTOPS):
            laptop = await Hostile.over(await listener.connect())
            await laptop.login("dr.a", PASSWORD, ORG)
            await laptop.enrol(f"laptop {k}")
            await subscribed(laptop)
            laptops.append(laptop)

        # Laptop 0 writes: the 4 others get seq 1 from one encoding; laptop 0 nothing.
        first, _size = await push_one(laptops[0], 1)
        for laptop in laptops[1:]:
            assert await next_live(laptop) == (1, first)
        assert len(encodings) == 1, "one encoding for the 4 connections that got seq 1"
        assert live_entries(laptops[0].events) == []

        # Laptop 1 writes: laptop 0 gets seq 2 as its first live entry (so seq 1, its
        # own, never reached it), the others too; laptop 1 is not sent its own.
        second, _size = await push_one(laptops[1], 2)
        for k in (0, 2, 3, 4):
            assert await next_live(laptops[k]) == (2, second)
        assert len(encodings) == 2

        # Laptop 2 writes: laptop 1's first live entry is seq 3, not its own seq 2.
        third, _size = await push_one(laptops[2], 3)
        for k in (0, 1, 3, 4):
            assert await next_live(laptops[k]) == (3, third)
        assert len(encodings) == 3
        assert all(live_entries(laptop.events) == [] for laptop in laptops)
        assert len(encodings) == 3
    finally:
        for laptop in laptops:
            await laptop.close()
        await listener.close()
        await server.close()


async def test_a_laptop_that_stops_reading_fills_its_channel_then_its_queue_then_is_dropped() -> (
    None
):
    bound = 5
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP, live_queue_entries=bound)
    await server.add_user(ORG, "dr.a", PASSWORD)
    listener = MemoryListener(server.handle)

    def dropped() -> float | None:
        return server.metrics.registry.get_sample_value("caresync_live_dropped_total")

    slow = await Hostile.over(await listener.connect())
    writer = await Hostile.over(await listener.connect())
    try:
        await slow.login("dr.a", PASSWORD, ORG)
        await slow.enrol("slow")
        await subscribed(slow)  # and from here it reads nothing
        await writer.login("dr.a", PASSWORD, ORG)
        await writer.enrol("writer")
        note = "x" * 8_000
        pushes = 0
        for seq in range(1, 200):
            assert dropped() == 0
            await push_one(writer, seq, note)
            pushes = seq
            if dropped() == 1:
                break
        assert dropped() == 1, "a laptop that reads nothing was never dropped"
        # Its channel took frames without waiting only while it had room (16 frames
        # and 128 KiB of 8 KB frames: about 17), then its queue took ``bound`` more.
        assert bound < pushes <= 17 + bound + 2, pushes
        assert await closed_by_server(slow.channel)
        # The writer goes on; nothing more is queued for the dropped laptop.
        await push_one(writer, pushes + 1, note)
        assert dropped() == 1
    finally:
        await writer.close()
        await slow.close()
        await listener.close()
        await server.close()


async def test_an_entry_too_large_for_one_laptop_closes_only_that_laptop() -> None:
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", PASSWORD)
    listener = MemoryListener(server.handle)
    # A laptop that announced the smallest frames a side may: 64 KiB.
    channel = await listener.connect()
    small = Hostile(ClientProtocol(max_frame_bytes=MIN_MAX_FRAME_BYTES), channel)
    small.protocol.send_hello()
    await small.expect(Welcome)
    small.protocol.prove_server(os.urandom(32))
    await small.expect(ServerProof)
    small.protocol.confirm_server()
    other = await Hostile.over(await listener.connect())
    writer = await Hostile.over(await listener.connect())
    try:
        for k, laptop in enumerate((small, other, writer)):
            await laptop.login("dr.a", PASSWORD, ORG)
            await laptop.enrol(f"laptop {k}")
        await subscribed(small)
        await subscribed(other)
        record_id, size = await push_one(writer, 1, "x" * (2 * MIN_MAX_FRAME_BYTES))
        assert size > MIN_MAX_FRAME_BYTES
        assert await next_live(other) == (1, record_id)
        assert await closed_by_server(small.channel)
        # The fan-out goes on for the others.
        second, _size = await push_one(writer, 2)
        assert await next_live(other) == (2, second)
    finally:
        for laptop in (small, other, writer):
            await laptop.close()
        await listener.close()
        await server.close()


async def test_the_relayed_counts_are_each_laptops_entries_and_their_bytes() -> None:
    """``events.relayed``: every entry sent live, and its bytes, once per laptop it went
    to; a laptop is not counted its own entries (the fan-out counts the bytes of an
    organisation's entries once, for the laptops that get them all)."""
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", PASSWORD)
    listener = MemoryListener(server.handle)
    laptops: list[Hostile] = []

    def counted() -> tuple[float | None, float | None]:
        sample = server.metrics.registry.get_sample_value
        return sample("caresync_live_updates_total"), sample("caresync_live_bytes_total")

    try:
        for k in range(3):
            laptop = await Hostile.over(await listener.connect())
            await laptop.login("dr.a", PASSWORD, ORG)
            await laptop.enrol(f"laptop {k}")
            await subscribed(laptop)
            laptops.append(laptop)
        assert counted() == (0, 0)
        first, size = await push_one(laptops[0], 1)
        for laptop in laptops[1:]:
            assert await next_live(laptop) == (1, first)
        assert counted() == (2, 2 * size)

        # One fan-out of two entries from laptops 0 and 1: laptop 2 gets both, the two
        # writers each the other's.
        a, b = Record.create(replica="x"), Record.create(replica="y")
        a.set("name", "a", author="dr.a")
        b.set("name", "bb" * 40, author="dr.a")
        ua, ub = a.update_since(), b.update_since()
        assert len(ua) != len(ub)
        server._fan_out(
            [
                FeedItem(10, a.record_id, ua, ORG, laptops[0].replica_id),
                FeedItem(11, b.record_id, ub, ORG, laptops[1].replica_id),
                FeedItem(12, "elsewhere", ua, "another clinic", None),
            ]
        )
        assert counted() == (2 + 4, 2 * size + 2 * len(ua) + 2 * len(ub))
        assert await next_live(laptops[0]) == (11, b.record_id)
        assert await next_live(laptops[1]) == (10, a.record_id)
        assert await next_live(laptops[2]) == (10, a.record_id)
        assert await next_live(laptops[2]) == (11, b.record_id)
        assert all(live_entries(laptop.events) == [] for laptop in laptops)
    finally:
        for laptop in laptops:
            await laptop.close()
        await listener.close()
        await server.close()


async def test_a_fan_out_while_the_writer_waits_for_its_connection_does_not_pass_its_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entries the connection's writer took from its queue, and holds while a request of
    the laptop holds the connection, are still the connection's: a later fan-out that
    comes between that request's end and the writer's turn must queue behind them, not
    write its entry at once (which moved ``live_seq`` past the held entries, so the
    writer skipped them: the laptop never got them, and its checkpoint passed them).

    The race, held with gates: the reader's OutboxReport holds its connection at the
    store; laptop B's entry is fanned out meanwhile (queued: the connection is busy) and
    taken by the writer, which waits for the connection; laptop C's commit waits before
    its fan-out until the report's store write returns, so it runs just after the
    report releases the connection and before the writer gets it."""
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", PASSWORD)
    listener = MemoryListener(server.handle)
    reader = await Hostile.over(await listener.connect())
    b = await Hostile.over(await listener.connect())
    c = await Hostile.over(await listener.connect())
    try:
        for k, laptop in enumerate((reader, b, c)):
            await laptop.login("dr.a", PASSWORD, ORG)
            await laptop.enrol(f"laptop {k}")
        await subscribed(reader)
        [conn] = [x for x in server._connections if x.protocol.replica_id == reader.replica_id]

        report_held, report_go = asyncio.Event(), asyncio.Event()
        c_held, c_go = asyncio.Event(), asyncio.Event()
        touch = server.store.touch_replica
        committed = server._follower.committed

        async def held_touch(*args: Any, **kwargs: Any) -> None:
            report_held.set()
            await report_go.wait()
            await touch(*args, **kwargs)
            c_go.set()  # C's fan-out goes first once the report lets the connection go

        async def held_committed(items: Any) -> None:
            if items and items[0].origin == c.replica_id:
                c_held.set()
                await c_go.wait()
            await committed(items)

        monkeypatch.setattr(server.store, "touch_replica", held_touch)
        monkeypatch.setattr(server._follower, "committed", held_committed)

        reader.protocol.report_outbox(1, 1)
        for frame in reader.protocol.data_to_send():
            await reader.channel.send(frame)
        async with asyncio.timeout(LIMIT_S):
            await report_held.wait()
        first, _size = await push_one(b, 1)
        assert conn.live.empty(), "the writer took B's entry and waits for the connection"

        record = Record.create(replica=c.replica_id)
        record.set("name", "patient 2", author="dr.a")
        c.protocol.push([(1, record.record_id, record.update_since())])
        for frame in c.protocol.data_to_send():
            await c.channel.send(frame)
        async with asyncio.timeout(LIMIT_S):
            await c_held.wait()
        report_go.set()

        assert await next_live(reader) == (1, first)
        assert await next_live(reader) == (2, record.record_id)
        assert isinstance(await c.next_event(), PushAck)
    finally:
        for laptop in (reader, b, c):
            await laptop.close()
        await listener.close()
        await server.close()


async def test_a_store_fault_after_a_push_committed_neither_hides_it_nor_holds_its_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a push's commit the server reads what it remembers for later frames (the
    records' state vectors, their checks). A fault of the store there (a dropped
    database connection, a disk error) left the committed entries unrelayed (a live
    laptop got them only with some later commit) and told the pusher that nothing was
    stored. The entries are committed: they are relayed, and the push acknowledged."""
    server = SyncServer(MemoryStore(), "server-1", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", PASSWORD)
    listener = MemoryListener(server.handle)
    reader = await Hostile.over(await listener.connect())
    writer = await Hostile.over(await listener.connect())
    try:
        for k, laptop in enumerate((reader, writer)):
            await laptop.login("dr.a", PASSWORD, ORG)
            await laptop.enrol(f"laptop {k}")
        await subscribed(reader)

        store = server.store
        write_remote, state_vectors = store.write_remote, store.state_vectors
        failing = False

        async def committed_then_failing(*args: Any, **kwargs: Any) -> Any:
            nonlocal failing
            written = await write_remote(*args, **kwargs)
            failing = True  # the commit is done; the store fails from here on
            return written

        async def faulty_state_vectors(*args: Any, **kwargs: Any) -> Any:
            if failing:
                raise StorageError("the database went away")
            return await state_vectors(*args, **kwargs)

        monkeypatch.setattr(store, "write_remote", committed_then_failing)
        monkeypatch.setattr(store, "state_vectors", faulty_state_vectors)
        record = Record.create(replica=writer.replica_id)
        record.set("name", "patient 1", author="dr.a")
        reply = await writer.push(1, record.record_id, record.update_since())
        failing = False
        assert reply == PushAck(1), reply

        # The server reads a connection's frames in order: once the pull is answered,
        # any live entry relayed before it is in.
        reader.protocol.request_pull(1, 10)
        seen: list[object] = []
        async with asyncio.timeout(LIMIT_S):
            while not seen or not isinstance(seen[-1], PullBatch):
                seen.append(await reader.next_event())
        assert live_entries(seen) == [(1, record.record_id)]
    finally:
        for laptop in (reader, writer):
            await laptop.close()
        await listener.close()
        await server.close()
