"""Protocol version 10: a pull names each record once, its feed entries merged.

Real parts: a server on 127.0.0.1 and SQLite files. A laptop that pulls many edits
of a few records gets one entry per record (the server merges their updates), takes
the server's checks for them without building a record, and ends with what a
version 9 laptop, taking the same entries one by one, ends with; its report counts
the feed entries. A batch stops at the laptop's ``pull_limit`` of records and at its
byte budget, and the pull goes on until everything is in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.e2e.test_first_copy_index import rows_by_record, seed
from tests.e2e.test_pull_checked import Counted

import caresync.replication.session
import caresync.server
from caresync.protocol import Message, PullBatch, ServerProtocol
from caresync.replica import Replica, SyncLimits
from caresync.server import SyncServer


class Batches:
    """Every PullBatch the server sends."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[PullBatch] = []
        send = ServerProtocol._send

        def spy(protocol: ServerProtocol, message: Message) -> None:
            if isinstance(message, PullBatch):
                self.sent.append(message)
            send(protocol, message)

        monkeypatch.setattr(ServerProtocol, "_send", spy)

    def taken(self) -> list[PullBatch]:
        """The batches sent since the last call."""
        sent, self.sent = self.sent, []
        return sent


async def edit_rounds(laptop: Replica, record_ids: Sequence[str], rounds: int) -> None:
    """``rounds`` syncs, each pushing one edit of every record (a feed entry each)."""
    for n in range(rounds):
        for record_id in record_ids:
            await laptop.set(record_id, "weightKg", 60 + n)
        await laptop.sync()


async def same_everywhere(laptops: Sequence[Replica], server: SyncServer) -> None:
    """The server's rows and cards on every laptop, and the same history."""
    ids = sorted(await server.store.record_ids())
    cards = await server.store.person_card_bytes(ids)
    rows = await rows_by_record(server)
    first = laptops[0]
    for laptop in laptops:
        assert await rows_by_record(laptop) == rows
        assert await laptop.store.person_card_bytes(ids) == cards
    for record_id in ids:
        view = await first.record(record_id)
        for laptop in laptops[1:]:
            other = await laptop.record(record_id)
            for path in ("weightKg", "birthDate", "name"):
                assert other.get(path) == view.get(path)
                assert other.history(path) == view.history(path)


async def test_many_edits_of_few_records_come_as_one_entry_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)  # some records with two birth dates: open conflicts
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", (7, 8, 9))
    older = await enrolled(tmp_path, server, "older", user="dr.b", rulebook=Counted())
    monkeypatch.undo()  # the spy goes too: set it again
    batches = Batches(monkeypatch)
    a = await enrolled(tmp_path, server, "a")
    b = await enrolled(tmp_path, server, "b")
    try:
        ids = sorted(await a.record_ids())[:3]
        head = await server.store.feed_head()
        await edit_rounds(a, ids, 4)
        # Concurrent edits of one field: a conflict the checks carry.
        await a.set(ids[0], "name", "Awa Ndiaye")
        await b.set(ids[0], "name", "Awa N'Diaye")
        await a.sync()
        await b.sync()
        await a.sync()
        entries = await server.store.feed_head() - head
        assert entries == 14
        batches.taken()

        Counted.runs = 0
        assert (await reader.sync()).downloaded == entries
        [batch] = batches.taken()
        assert sorted(i.record_id for i in batch.items) == ids  # one entry per record
        assert batch.feed_entries == entries
        assert Counted.runs == 0  # the server's checks fit the merged entries
        view = await reader.record(ids[0])
        assert view.get("name").in_conflict
        assert view.value("weightKg") == 63

        monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", (7, 8, 9))
        assert (await older.sync()).downloaded == entries
        [old_batch] = batches.taken()
        assert len(old_batch.items) == entries  # one by one, as before
        assert old_batch.feed_entries == entries
        await same_everywhere([reader, older, a, b], server)
    finally:
        for laptop in (reader, older, a, b):
            await laptop.close()
        await server.close()


async def test_a_batch_names_at_most_the_laptops_limit_of_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    reader = await enrolled(
        tmp_path, server, "reader", user="dr.b", limits=SyncLimits(pull_limit=2)
    )
    writer = await enrolled(tmp_path, server, "writer")
    try:
        ids = sorted(await writer.record_ids())[:5]
        for record_id in ids:  # each record's three entries one after another in the feed
            await edit_rounds(writer, [record_id], 3)
        batches.taken()
        assert (await reader.sync()).downloaded == 15
        sent = batches.taken()
        # Two records a batch, all their entries merged: 6 + 6 + 3 feed entries.
        assert [[i.record_id for i in b.items] for b in sent] == [ids[0:2], ids[2:4], ids[4:]]
        assert [b.feed_entries for b in sent] == [6, 6, 3]
        await same_everywhere([reader, writer], server)
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_batch_stops_at_its_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(caresync.server, "_PULL_BYTES", 1)  # one entry's worth: the least
    batches = Batches(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    reader = await enrolled(tmp_path, server, "reader", user="dr.b")
    writer = await enrolled(tmp_path, server, "writer")
    try:
        ids = sorted(await writer.record_ids())[:2]
        await edit_rounds(writer, ids, 3)
        batches.taken()
        assert (await reader.sync()).downloaded == 6
        sent = batches.taken()
        assert [b.feed_entries for b in sent] == [1] * 6  # each batch moves, one entry
        await same_everywhere([reader, writer], server)
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_read_that_ends_at_the_feeds_head_is_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The laptop's limit of new entries exactly, the last of them the feed's head: the
    batch is the pull's last, read with one read of the feed (none after it to find
    nothing); one entry more than the limit, and the feed is read on, as before."""
    batches = Batches(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    reader = await enrolled(
        tmp_path, server, "reader", user="dr.b", limits=SyncLimits(pull_limit=2)
    )
    writer = await enrolled(tmp_path, server, "writer")
    reads: list[int] = []
    feed_since = server.store.feed_since

    async def counted(after_seq: int, **kwargs: Any) -> Any:
        found = await feed_since(after_seq, **kwargs)
        reads.append(len(found))
        return found

    monkeypatch.setattr(server.store, "feed_since", counted)
    try:
        ids = sorted(await writer.record_ids())[:3]
        await edit_rounds(writer, ids[:2], 1)  # two entries: the reader's limit
        batches.taken()
        reads.clear()
        assert (await reader.sync()).downloaded == 2
        assert reads == [2]  # not [2, 0]
        [batch] = batches.taken()
        assert batch.checkpoint == batch.head_seq == await server.store.feed_head()
        assert not batch.more
        await same_everywhere([reader, writer], server)

        await edit_rounds(writer, ids, 1)  # three entries: one past the limit
        batches.taken()
        reads.clear()
        assert (await reader.sync()).downloaded == 3
        # The first batch reads on and finds the third (it is full), which the second
        # batch reads again, and ends at the head.
        assert reads == [2, 1, 1]
        assert [[i.record_id for i in b.items] for b in batches.taken()] == [ids[:2], ids[2:]]
        await same_everywhere([reader, writer], server)
    finally:
        await reader.close()
        await writer.close()
        await server.close()
