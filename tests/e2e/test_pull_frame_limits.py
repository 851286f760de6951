"""Every entry a server stores reaches every laptop whose frames are as large as the
server's, and a laptop with smaller frames is told what stops it.

Real parts: a server on 127.0.0.1 (SQLite file) and hand-driven clients over real
websockets that announce the smallest frames a side may (64 KiB). Before these
checks, a pull whose entries did not fit the laptop's frame made the server's
encoding raise, and the connection closed with nothing said, at every pull.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from tests.e2e.hostile import Hostile, refusal
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

import caresync.server
from caresync.protocol import (
    BATCH_OVERHEAD_BYTES,
    MIN_MAX_FRAME_BYTES,
    ErrorCode,
    PullBatch,
    PushAck,
    ServerProtocol,
)
from caresync.records import Record
from caresync.replica import Replica

NOTE = 20_000  # characters of one note: three notes fill a 64 KiB frame


async def small_laptop(url: str, **hello: object) -> Hostile:
    """A laptop logged in and enrolled that accepts frames of 64 KiB at most."""
    laptop = await Hostile.connect(url, max_frame_bytes=MIN_MAX_FRAME_BYTES, **hello)
    await laptop.login("dr.b", PASSWORD, "clinic-a")
    await laptop.enrol("small frames")
    return laptop


async def pull(laptop: Hostile, after_seq: int) -> PullBatch | object:
    """One pull request's answer: a PullBatch (its hub report read too) or an Error."""
    laptop.protocol.request_pull(after_seq, 1000)
    reply = await laptop.next_event()
    if isinstance(reply, PullBatch):
        await laptop.hub_report(reply)
    return reply


async def records_with_notes(laptop: Replica, sizes: list[int]) -> list[str]:
    """One record per size, each with a note of that many characters, synced in order."""
    ids = []
    for size in sizes:
        record_id = await laptop.create_record()
        await laptop.set(record_id, "note", "x" * size)
        await laptop.sync()
        ids.append(record_id)
    return ids


async def test_an_entry_larger_than_the_laptops_frame_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    small = None
    try:
        before, big, after = await records_with_notes(writer, [10, 100_000, 10])
        feed = await server.store.feed_since(0, limit=100)
        big_seq = max(e.seq for e in feed if e.record_id == big)  # its note
        small = await small_laptop(server.url)

        batch = await pull(small, 0)
        assert isinstance(batch, PullBatch)
        assert batch.more  # everything before the large entry came
        assert {i.record_id for i in batch.items} == {before, big}  # big's creation
        assert max(i.seq for i in batch.items) == batch.checkpoint == big_seq - 1

        for _attempt in range(2):  # refused each time, and the connection stays open
            error = refusal(await pull(small, batch.checkpoint))
            assert error.code == ErrorCode.TOO_LARGE
            assert f"feed entry {big_seq} (record {big})" in error.message
            assert error.detail["seq"] == big_seq
            needed = error.detail["needed"]
            assert isinstance(needed, int)
            assert needed > 100_000 + BATCH_OVERHEAD_BYTES
            assert needed > MIN_MAX_FRAME_BYTES
            assert "nothing is lost" in error.message

        # A laptop with caresync's own frames gets all three.
        reader = await enrolled(tmp_path, server, "reader", user="dr.b")
        assert set(await reader.record_ids()) >= {before, big, after}
        assert (await reader.record(big)).value("note") == "x" * 100_000
        await reader.close()
    finally:
        if small is not None:
            await small.close()
        await writer.close()
        await server.close()


async def test_a_version_9_pull_fits_the_laptops_frame(tmp_path: Path) -> None:
    # Version 9 took ``limit`` entries whatever their size: six notes of 20,000
    # characters did not fit a 64 KiB frame.
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    small = None
    try:
        ids = await records_with_notes(writer, [NOTE] * 6)
        head = await server.store.feed_head()
        small = await small_laptop(server.url, protocol_versions=(9,))
        assert small.protocol.protocol_version == 9
        got: list[str] = []
        after, batches = 0, 0
        for _ in range(20):  # bounded: three notes a batch
            batches += 1
            batch = await pull(small, after)
            assert isinstance(batch, PullBatch)
            got.extend(i.record_id for i in batch.items)
            assert sum(len(i.update) for i in batch.items) < MIN_MAX_FRAME_BYTES
            after = batch.checkpoint
            if not batch.more:
                break
        assert after == head
        assert batches >= 2  # 120 KB of notes in frames of 64 KiB
        assert set(ids) <= set(got)
    finally:
        if small is not None:
            await small.close()
        await writer.close()
        await server.close()


async def test_a_push_that_no_laptop_frame_could_carry_is_refused_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server whose frames are 256 KiB: a push frame of 254 KiB arrives, but its
    # entry, with a pull batch's overhead, would fit no laptop frame as large as
    # the server's; stored, it would reach nobody.
    frame = 256 * 1024
    monkeypatch.setattr(
        caresync.server, "ServerProtocol", functools.partial(ServerProtocol, max_frame_bytes=frame)
    )
    server = await start_server(tmp_path)
    laptop = None
    try:
        laptop = await Hostile.connect(server.url, max_frame_bytes=frame)
        await laptop.login("dr.a", PASSWORD, "clinic-a")
        await laptop.enrol("large edits")
        head = await server.store.feed_head()

        record = Record.create(replica=laptop.replica_id)
        record.set("note", "x" * 200_000, author="dr.a")
        record.set("summary", "y" * (frame - BATCH_OVERHEAD_BYTES - 200_000), author="dr.a")
        update = record.update_since()
        assert frame - BATCH_OVERHEAD_BYTES < len(update) < frame - 1024
        error = refusal(await laptop.push(1, record.record_id, update))
        assert error.code == ErrorCode.TOO_LARGE
        assert "nothing stored" in error.message
        assert await server.store.feed_head() == head

        # A smaller one on the same connection goes in.
        fits = Record.create(replica=laptop.replica_id)
        fits.set("note", "x" * 200_000, author="dr.a")
        assert await laptop.push(2, fits.record_id, fits.update_since()) == PushAck(2)
        assert await server.store.feed_head() == head + 1
    finally:
        if laptop is not None:
            await laptop.close()
        await server.close()
