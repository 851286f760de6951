"""A pull's checks of records a push here committed are taken as committed, not read again.

Real parts: a server on 127.0.0.1 and SQLite files. After a push, the server keeps
each pushed record's check (state vector, card, rows and their digests) as it
committed it; a pull of a record still in that state sends that check without
reading the record's card and rows from the store. A record another writer moved
meanwhile (another process sharing the database) is in another state: its check is
read from the store as before, and the laptop ends with the stored card and rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.e2e.test_first_copy_index import seed
from tests.e2e.test_pull_checked import Counted
from tests.e2e.test_pull_references import Sent, edit_and_sync, same_as_server

from caresync import Record
from caresync.protocol import is_card_reference, is_held_reference
from caresync.records.persons import person_card
from caresync.replication.pool import conflict_rows
from caresync.server import SyncServer
from caresync.storage import IncomingUpdate


class Reads:
    """The record ids whose cards and rows the server's store is asked for."""

    def __init__(self, server: SyncServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cards: list[str] = []
        self.rows: list[str] = []
        store = server.store
        read_cards, read_rows = store.person_card_bytes, store.conflict_rows

        async def cards(record_ids: Sequence[str]) -> Any:
            self.cards.extend(record_ids)
            return await read_cards(record_ids)

        async def rows(record_ids: Sequence[str]) -> Any:
            self.rows.extend(record_ids)
            return await read_rows(record_ids)

        monkeypatch.setattr(store, "person_card_bytes", cards)
        monkeypatch.setattr(store, "conflict_rows", rows)

    def clear(self) -> None:
        self.cards.clear()
        self.rows.clear()


async def test_a_pull_after_a_push_reads_no_card_or_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    reads = Reads(server, monkeypatch)
    try:
        ids = sorted(await writer.record_ids())[:4]
        # New cards: they go in full, from what the push committed.
        await edit_and_sync(writer, ids, "birthDate", "1970-01-01")
        reads.clear()
        sent.states.clear()
        Counted.runs = 0
        assert (await reader.sync()).downloaded == len(ids)
        assert not set(ids) & {*reads.cards, *reads.rows}
        assert Counted.runs == 0
        cards = list(sent.cards(ids))
        assert len(cards) == len(ids)
        assert all(c is not None and not is_card_reference(c) for c in cards)
        await same_as_server(reader, server, ids)

        # Unchanged card and rows: a held reference each, digests as committed.
        await edit_and_sync(writer, ids, "summary", "seen in clinic")
        reads.clear()
        Counted.runs = 0
        assert (await reader.sync()).downloaded == len(ids)
        assert not set(ids) & {*reads.cards, *reads.rows}
        assert Counted.runs == 0
        assert all(c is not None and is_held_reference(c) for c in sent.cards(ids))
        await same_as_server(reader, server, ids)
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_record_another_writer_moved_is_read_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    reads = Reads(server, monkeypatch)
    try:
        ids = sorted(await writer.record_ids())[:4]
        await edit_and_sync(writer, ids, "summary", "seen in clinic")
        await reader.sync()
        # Another process writes two of them to the database (a new birth date: a new
        # card), behind this server's back: what it kept of them is of an older state.
        moved = ids[:2]
        stored = await server.store.load_many(moved)
        items = []
        for record_id in moved:
            record = Record.from_update(record_id, stored[record_id], replica="other-process")
            before = record.state_vector()
            record.set("birthDate", "1950-05-05", author="dr.a")
            items.append(
                IncomingUpdate(
                    record_id,
                    record.update_since(before),
                    conflict_rows(record, server.rulebook),
                    "clinic-a",
                    person_card(record),
                )
            )
        await server.store.write_remote(items, to_feed=True)
        reads.clear()
        sent.states.clear()
        Counted.runs = 0
        assert (await reader.sync()).downloaded == len(moved)
        # Read as stored, and the new cards went in full: the laptop built nothing.
        assert set(moved) <= set(reads.cards)
        assert set(moved) <= set(reads.rows)
        cards = list(sent.cards(moved))
        assert all(c is not None and not is_card_reference(c) for c in cards)
        assert Counted.runs == 0
        await same_as_server(reader, server, ids)
        for record_id in moved:
            assert (await reader.record(record_id)).value("birthDate") == "1950-05-05"
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_rows_a_push_made_go_in_the_order_the_store_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records left in conflict by a push, several rows each: a pull after it sends them
    as the store holds them (in id order, as a frame must carry them), from memory."""
    server = await start_server(tmp_path)
    await seed(server)
    one = await enrolled(tmp_path, server, "one")
    two = await enrolled(tmp_path, server, "two", user="dr.b")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    reads = Reads(server, monkeypatch)
    try:
        ids = sorted(await one.record_ids())[:8]
        # The same fields set apart on two laptops: the second push leaves each record
        # with a conflict row per field.
        for laptop, values in (
            (one, ("1970-01-01", "female", "x")),
            (two, ("1971-02-02", "male", "y")),
        ):
            for record_id in ids:
                await laptop.set(record_id, "birthDate", values[0])
                await laptop.set(record_id, "gender", values[1])
                await laptop.set(record_id, "summary", values[2])
        await one.sync()
        await two.sync()
        stored = await server.store.conflict_rows(ids)
        assert all(len(stored.get(record_id, ())) >= 2 for record_id in ids)
        reads.clear()
        Counted.runs = 0
        assert (await reader.sync()).downloaded >= len(ids)
        assert not set(ids) & {*reads.cards, *reads.rows}  # from what the push kept
        assert Counted.runs == 0
        await same_as_server(reader, server, ids)
        assert await reader.store.conflict_rows(ids) == stored
    finally:
        await reader.close()
        await two.close()
        await one.close()
        await server.close()
