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

import caresync.replication.session
import caresync.server
from caresync.exceptions import InvalidInputError
from caresync.protocol import (
    BATCH_OVERHEAD_BYTES,
    MAX_MAX_FRAME_BYTES,
    MAX_SEQ,
    MIN_MAX_FRAME_BYTES,
    ClientProtocol,
    ErrorCode,
    FeedItem,
    PullBatch,
    PushAck,
    PushBatch,
    PushItem,
    ServerProtocol,
    encode_frame,
)
from caresync.records import Record
from caresync.replica import Replica

NOTE = 20_000  # characters of one note: three notes fill a 64 KiB frame
FRAME = 256 * 1024


def frames_of(monkeypatch: pytest.MonkeyPatch, server: int, laptop: int | None = None) -> None:
    """Servers (and caresync laptops, when ``laptop``) that accept frames of that size."""
    monkeypatch.setattr(
        caresync.server, "ServerProtocol", functools.partial(ServerProtocol, max_frame_bytes=server)
    )
    if laptop is not None:
        monkeypatch.setattr(
            caresync.replication.session,
            "ClientProtocol",
            functools.partial(ClientProtocol, max_frame_bytes=laptop),
        )


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


def push_frame_size(record_id: str, update: bytes) -> int:
    batch = PushBatch((PushItem(1, record_id, update),))
    return len(encode_frame(batch, max_frame_bytes=MAX_MAX_FRAME_BYTES))


def pull_alone_fits(record_id: str, update: bytes, frame: int) -> bool:
    """Whether a pull batch of this one entry, at the largest seqs, fits ``frame``."""
    batch = PullBatch((FeedItem(MAX_SEQ, record_id, update),), MAX_SEQ, MAX_SEQ, None, None, 1)
    return len(encode_frame(batch, max_frame_bytes=MAX_MAX_FRAME_BYTES)) <= frame


async def test_a_push_that_no_laptop_frame_could_carry_is_refused_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pull batch says more than a push batch (a checkpoint, the head, a count): an
    # update whose push frame just fits the server's frames would fit no laptop's pull
    # frame as large. Stored, it would reach nobody.
    frames_of(monkeypatch, FRAME)
    server = await start_server(tmp_path)
    laptop = None
    try:
        laptop = await Hostile.connect(server.url, max_frame_bytes=FRAME)
        await laptop.login("dr.a", PASSWORD, "clinic-a")
        await laptop.enrol("large edits")
        head = await server.store.feed_head()

        def with_note(length: int) -> Record:
            record = Record.create(replica=laptop.replica_id if laptop else "")
            record.set("note", "x" * length, author="dr.a")
            return record

        probe = with_note(200_000)
        overhead = push_frame_size(probe.record_id, probe.update_since()) - 200_000
        # A push frame of FRAME bytes or a few less (each record's Yjs client id, drawn
        # at random, takes 1 to 8 bytes: a few tries, each closer).
        length = FRAME - overhead
        for _ in range(20):
            record = with_note(length)
            update = record.update_since()
            size = push_frame_size(record.record_id, update)
            if size <= FRAME and not pull_alone_fits(record.record_id, update, FRAME):
                break
            length += FRAME - size
        assert push_frame_size(record.record_id, update) <= FRAME
        assert not pull_alone_fits(record.record_id, update, FRAME)
        error = refusal(await laptop.push(1, record.record_id, update))
        assert error.code == ErrorCode.TOO_LARGE
        assert "nothing stored" in error.message
        assert await server.store.feed_head() == head

        # A little smaller, on the same connection, goes in (well within the 4 KiB
        # spare that batches keep, which is not the bound for one entry).
        fits = with_note(FRAME - overhead - 1024)
        assert await laptop.push(2, fits.record_id, fits.update_since()) == PushAck(2)
        assert await server.store.feed_head() == head + 1
    finally:
        if laptop is not None:
            await laptop.close()
        await server.close()


async def test_an_entry_within_the_frame_but_not_its_spare_4_kib_is_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches keep 4 KiB spare; one entry's batch needs far less. An entry stored by a
    # server with larger frames, within a laptop's frame by less than 4 KiB, still goes.
    frames_of(monkeypatch, 2 * FRAME)
    server = await start_server(tmp_path)
    writer = reader = None
    try:
        writer = await Hostile.connect(server.url, max_frame_bytes=2 * FRAME)
        await writer.login("dr.a", PASSWORD, "clinic-a")
        await writer.enrol("writer")
        record = Record.create(replica=writer.replica_id)
        record.set("note", "x" * (FRAME - 3000), author="dr.a")
        update = record.update_since()
        assert FRAME - BATCH_OVERHEAD_BYTES < len(update) < FRAME - 1500
        assert await writer.push(1, record.record_id, update) == PushAck(1)
        [entry] = await server.store.feed_since(0, limit=10)
        alone = PullBatch((FeedItem(entry.seq, entry.record_id, entry.update),), 1, 1)
        assert len(encode_frame(alone, max_frame_bytes=FRAME)) < FRAME - 1000

        reader = await Hostile.connect(server.url, max_frame_bytes=FRAME)
        await reader.login("dr.b", PASSWORD, "clinic-a")
        await reader.enrol("reader")
        batch = await pull(reader, 0)
        assert isinstance(batch, PullBatch), batch
        assert [i.update for i in batch.items] == [update]
    finally:
        for client in (writer, reader):
            if client is not None:
                await client.close()
        await server.close()


async def test_an_edit_no_frame_could_carry_is_refused_when_made(tmp_path: Path) -> None:
    # Stored, it would wait in the outbox for ever (the server refuses it) and keep
    # every later change back: the laptop refuses it at once, writing nothing.
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        record_id = await laptop.create_record()
        before = await laptop.store.outbox_summary()
        fields = {f"part{i}": f"{i:03d}" + "x" * 250_000 for i in range(70)}  # 17.5 MB
        with pytest.raises(InvalidInputError, match="more than one sync frame carries"):
            await laptop.add_entry(record_id, "notes", fields, author="dr.a")
        assert await laptop.store.outbox_summary() == before
        assert (await laptop.record(record_id)).entry_ids("notes") == []
        # Smaller edits of the same go in.
        await laptop.add_entry(record_id, "notes", {"part0": "x" * 250_000}, author="dr.a")
        assert (await laptop.store.outbox_summary()).pending == before.pending + 1
        assert len((await laptop.record(record_id)).entry_ids("notes")) == 1
    finally:
        await laptop.close()
