"""Protocol version 9: what a laptop holds already goes as a reference, not in full.

Real parts: a server on 127.0.0.1 and SQLite files. A pulled record's person card
and conflict rows that the laptop has held since before the pulled entries are
sent as a reference (the card's, or the card's and rows' digests) and kept as they
are; a card or rows changed since the laptop's checkpoint go in full; a laptop
that does not hold what a reference names builds and checks the record, and ends
with the server's card and rows all the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from tests.e2e.live_helpers import LIMIT_S, enrolled, live, start_server, until, watch
from tests.e2e.test_first_copy_index import rows_by_record, seed
from tests.e2e.test_pull_checked import Counted
from tests.sqlite_trace import traced, write_transactions

from caresync import Record
from caresync.protocol import (
    CheckedState,
    LiveBatch,
    LiveUpdate,
    Message,
    PullBatch,
    ServerProtocol,
    is_card_reference,
    is_held_reference,
)
from caresync.protocol.server import RecordCheck
from caresync.records.persons import person_card
from caresync.replica import Replica, ReplicaState
from caresync.replication import meta
from caresync.replication.epochs import FeedPosition
from caresync.server import SyncServer
from caresync.storage import SQLiteStore


class Sent:
    """The checked states of every PullBatch the server sends."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.states: list[CheckedState] = []
        send = ServerProtocol._send

        def spy(protocol: ServerProtocol, message: Message) -> None:
            if isinstance(message, PullBatch):
                self.states.extend(message.checked or ())
            send(protocol, message)

        monkeypatch.setattr(ServerProtocol, "_send", spy)

    def cards(self, record_ids: Sequence[str]) -> Iterator[bytes | None]:
        """The cards sent for these records since the last call."""
        wanted = set(record_ids)
        found = [s.card for s in self.states if s.record_id in wanted]
        self.states.clear()
        return iter(found)


async def edit_and_sync(laptop: Replica, record_ids: Sequence[str], path: str, value: str) -> None:
    for record_id in record_ids:
        await laptop.set(record_id, path, value)
    await laptop.sync()


async def same_as_server(laptop: Replica, server: SyncServer, record_ids: Sequence[str]) -> None:
    assert await rows_by_record(laptop) == await rows_by_record(server)
    mine = await laptop.store.person_card_bytes(record_ids)
    assert mine == await server.store.person_card_bytes(record_ids)
    assert len(mine) == len(record_ids)


async def test_what_the_laptop_holds_goes_as_a_reference_and_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())[:4]
        # New cards (a birth date is on the card): they go in full, nothing is built.
        await edit_and_sync(writer, ids, "birthDate", "1970-01-01")
        sent.states.clear()
        Counted.runs = 0
        assert (await reader.sync()).downloaded == len(ids)
        assert Counted.runs == 0
        cards = list(sent.cards(ids))
        assert len(cards) == len(ids)
        assert all(c is not None and not is_card_reference(c) for c in cards)
        await same_as_server(reader, server, ids)

        # An edit that changes neither card nor conflicts: one reference each, no rows.
        await edit_and_sync(writer, ids, "summary", "seen in clinic")
        sent.states.clear()
        Counted.runs = 0
        assert (await reader.sync()).downloaded == len(ids)
        assert Counted.runs == 0
        cards = list(sent.cards(ids))
        assert len(cards) == len(ids)
        assert all(c is not None and is_held_reference(c) for c in cards)
        await same_as_server(reader, server, ids)
        for record_id in ids:
            assert (await reader.record(record_id)).value("summary") == "seen in clinic"
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_rows_referred_to_are_left_as_stored_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows the laptop holds, referred to by a held reference, stay as they are: the
    pull's commit neither deletes nor inserts them (records in conflict among them)."""
    sent = Sent(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        in_conflict = sorted(await rows_by_record(server))[:2]
        calm = sorted(set(await writer.record_ids()) - set(await rows_by_record(server)))[:2]
        ids = [*in_conflict, *calm]
        assert len(ids) == 4
        # Cards first (the seeded records have none): they go in full.
        await edit_and_sync(writer, ids, "gender", "female")
        assert (await reader.sync()).downloaded == len(ids)
        rows_before = await reader.store.conflict_rows(ids)
        assert set(rows_before) == set(in_conflict)
        # An edit that changes neither card nor rows: held references.
        await edit_and_sync(writer, ids, "summary", "seen in clinic")
        sent.states.clear()
        Counted.runs = 0
        assert isinstance(reader.store, SQLiteStore)
        async with traced(reader.store) as statements:
            assert (await reader.sync()).downloaded == len(ids)
        cards = list(sent.cards(ids))
        assert all(c is not None and is_held_reference(c) for c in cards)
        assert Counted.runs == 0
        written = [s for t in write_transactions(statements) for s in t]
        assert any("INSERT INTO log" in s for s in written)  # the pull was committed...
        assert not [s for s in written if "conflicts" in s.lower()]  # ...its rows untouched
        assert await reader.store.conflict_rows(ids) == rows_before
        await same_as_server(reader, server, ids)
        for record_id in ids:
            assert (await reader.record(record_id)).value("summary") == "seen in clinic"
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_laptop_that_lacks_what_a_reference_names_builds_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())[:4]
        await edit_and_sync(writer, ids, "birthDate", "1970-01-01")
        await reader.sync()
        # The reader's stored cards of two records are no longer the server's (as if
        # the server's memory of what it holds were wrong).
        wrong = {}
        for record_id in ids[:2]:
            other = Record.create(replica="elsewhere", record_id=record_id)
            other.set("name", "someone else", author="dr.b")
            wrong[record_id] = person_card(other)
        rows = await reader.store.conflict_rows(ids[:2])
        await reader.store.set_conflicts_many(
            {rid: rows.get(rid, ()) for rid in ids[:2]}, persons=wrong
        )

        await edit_and_sync(writer, ids, "summary", "seen in clinic")
        sent.states.clear()
        Counted.runs = 0
        assert (await reader.sync()).downloaded == len(ids)
        assert all(c is not None and is_held_reference(c) for c in sent.cards(ids))
        assert Counted.runs == 2  # the two whose card is not the one referred to
        await same_as_server(reader, server, ids)
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_version_8_laptop_gets_cards_and_rows_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import caresync.replication.session

    sent = Sent(monkeypatch)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", (4, 5, 6, 7, 8))
    older = await enrolled(tmp_path, server, "older", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())[:4]
        await edit_and_sync(writer, ids, "birthDate", "1970-01-01")
        await older.sync()
        await edit_and_sync(writer, ids, "summary", "seen in clinic")
        sent.states.clear()
        Counted.runs = 0
        assert (await older.sync()).downloaded == len(ids)
        assert Counted.runs == 0
        cards = list(sent.cards(ids))
        assert len(cards) == len(ids)
        assert all(c is not None and c.startswith(b"{") for c in cards)  # cards, in full
        await same_as_server(older, server, ids)
    finally:
        await older.close()
        await writer.close()
        await server.close()


async def test_live_entries_refer_to_what_the_laptop_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames: list[CheckedState] = []
    # Every live frame's messages are made here, queued or encoded once and shared.
    make = ServerProtocol._live_messages

    def spy(
        protocol: ServerProtocol,
        fresh: list[tuple[int, str, bytes]],
        checks: Mapping[str, RecordCheck] | None,
    ) -> list[LiveUpdate | LiveBatch]:
        messages = make(protocol, fresh, checks)
        for message in messages:
            if isinstance(message, LiveBatch):
                frames.extend(message.checked or ())
        return messages

    monkeypatch.setattr(ServerProtocol, "_live_messages", spy)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())[:3]
        await edit_and_sync(writer, ids, "birthDate", "1970-01-01")
        await reader.sync()  # holds those cards and rows now
        signal = watch(reader)
        async with live(reader) as run:
            async with asyncio.timeout(LIMIT_S):
                await run.states.reach(ReplicaState.ONLINE)
            Counted.runs = 0
            await edit_and_sync(writer, ids, "summary", "seen live")

            async def caught_up() -> bool:
                head = await server.store.feed_head()
                return FeedPosition.parse(await reader.store.get_meta(meta.CHECKPOINT)).seq == head

            async with asyncio.timeout(LIMIT_S):
                await until(caught_up, signal)
            assert Counted.runs == 0
        sent = [s.card for s in frames if s.record_id in set(ids)]
        assert len(sent) == len(ids)
        assert all(c is not None and is_held_reference(c) for c in sent)
        await same_as_server(reader, server, ids)
        for record_id in ids:
            assert (await reader.record(record_id)).value("summary") == "seen live"
    finally:
        await reader.close()
        await writer.close()
        await server.close()
