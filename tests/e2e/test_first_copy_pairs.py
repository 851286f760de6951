"""A first copy carries the server's person pairs (protocol version COPY_PAIRS_SINCE).

Real parts: a server on 127.0.0.1 and SQLite files. The server holds patients, some
registered twice (with a slip, across batch boundaries), with link decisions between
some (same person, two people, and one in conflict). A laptop of this version takes
the server's pairs instead of looking up who shares a blocking key, and ends with the
index the server holds; an older laptop, or one talking to an older server, looks them
up as before and ends with the same. A server whose pairs name a record the laptop does
not hold stops the copy with nothing of that batch stored; a pair the cards do not make
is not stored.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

import caresync.replication.session
import caresync.server
import caresync.storage.sqlite.persons
from caresync import Record
from caresync.protocol import COPY_PAIRS_SINCE, CopyBatch, CopyPair, ServerProtocol
from caresync.records.persons import (
    DIFFERENT_PEOPLE,
    SAME_PERSON,
    PairState,
    link_path,
    person_card,
)
from caresync.replica import Replica
from caresync.replication.pool import conflict_rows
from caresync.replication.session import SyncLimits
from caresync.server import SyncServer
from caresync.storage import IncomingUpdate
from caresync.storage.base import CopyPage

BATCH = 4
OLDER = tuple(range(4, COPY_PAIRS_SINCE))  # the versions a laptop before pairs speaks


def patients() -> list[Record]:
    """Sixteen records: every third patient registered again (a slip in the name), and
    link decisions on three of those pairs (one of them contested)."""
    records = []
    for i in range(16):
        record = Record.create(replica="desk-a")
        with record.batch():
            record.set("name", f"Awa Ndiay{'e' if i % 3 else ''} {i // 3}", author="registrar")
            record.set("birthDate", f"19{60 + i // 3}-04-12", author="registrar")
            record.set("gender", "female", author="registrar")
        records.append(record)
    by_person = [records[i : i + 3] for i in range(0, 15, 3)]
    by_person[0][0].set(link_path(by_person[0][1].record_id), SAME_PERSON, author="dr.a")
    by_person[1][1].set(link_path(by_person[1][0].record_id), DIFFERENT_PEOPLE, author="dr.a")
    a, b = by_person[2][0], by_person[2][2]
    other = Record.from_update(a.record_id, a.update_since(), replica="desk-b")
    a.set(link_path(b.record_id), SAME_PERSON, author="dr.a")
    other.set(link_path(b.record_id), DIFFERENT_PEOPLE, author="dr.b")
    a.apply_update(other.update_since(a.state_vector()))  # contested
    return records


async def seeded(tmp_path: Path) -> SyncServer:
    server = await start_server(tmp_path)
    await server.store.write_remote(
        [
            IncomingUpdate(
                r.record_id,
                r.update_since(),
                conflict_rows(r, server.rulebook),
                "clinic-a",
                person_card(r),
            )
            for r in patients()
        ],
        to_feed=True,
    )
    return server


class Lookups:
    """Counts the laptop store's look-ups of who holds a blocking key."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        looked_up = caresync.storage.sqlite.persons._key_holders

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return looked_up(*args, **kwargs)

        monkeypatch.setattr(caresync.storage.sqlite.persons, "_key_holders", counted)


async def check_same_index(laptop: Replica, server: SyncServer) -> None:
    """The laptop's person index is the server's: pairs, states, cards, and no damage."""
    pairs = await server.store.person_pairs()
    assert {p.state for p in pairs} == set(PairState)  # possible, linked and disputed
    assert await laptop.store.person_pairs() == pairs
    ids = sorted(await server.store.record_ids())
    assert await laptop.store.person_card_bytes(ids) == await server.store.person_card_bytes(ids)
    for state in (None, *PairState):
        assert await laptop.store.count_person_pairs(state) == len(
            [p for p in pairs if state in (None, p.state)]
        )
    assert await laptop.store.check() == []


async def test_a_laptop_takes_the_servers_pairs_and_looks_up_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await seeded(tmp_path)
    lookups = Lookups(monkeypatch)
    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(copy_batch_records=BATCH))
    try:
        assert lookups.calls == 0
        await check_same_index(laptop, server)
        # The key rows set aside batch after batch are in the index (schema 17).
        assert set_aside(laptop) == 0
        # The key rows were written: a record registered here later pairs with the copy.
        [pair, *_] = await server.store.person_pairs(state=PairState.POSSIBLE)
        again = await laptop.create_record()
        await laptop.set(again, "name", pair.first.display)
        await laptop.set(again, "birthDate", pair.first.birth_dates[0])
        mine = {p.other(again).record_id for p in await laptop.person_pairs(again)}
        assert pair.first.record_id in mine
        assert lookups.calls > 0
    finally:
        await laptop.close()
        await server.close()


def set_aside(laptop: Replica) -> int:
    """How many key rows a first copy has set aside in the laptop's file."""
    conn = sqlite3.connect(laptop.store.path)  # type: ignore[attr-defined]
    try:
        return int(conn.execute("SELECT COUNT(*) FROM person_keys_copied").fetchone()[0])
    finally:
        conn.close()


class CutHere(Exception):
    """Raised by a progress callback to cut the first copy after a batch."""


@pytest.mark.parametrize("cut_after", [1, 2, 4])
async def test_a_copy_cut_and_resumed_ends_with_the_servers_index(
    tmp_path: Path, cut_after: int
) -> None:
    """Cut after a batch committed (the fourth: the last, before the copy is marked
    done), the key rows of the batches before wait aside; the copy resumed (a sync)
    ends with the server's index and none aside."""
    server = await seeded(tmp_path)
    laptop = await Replica.open(tmp_path / "laptop.db", limits=SyncLimits(copy_batch_records=BATCH))
    seen: list[object] = []

    def cut(progress: object) -> None:
        seen.append(progress)
        if len(seen) == cut_after:
            raise CutHere

    try:
        with pytest.raises(CutHere):
            await laptop.enrol(
                server.url,
                username="dr.a",
                password=PASSWORD,
                organisation="clinic-a",
                progress=cut,
            )
        assert len(await laptop.store.record_ids()) == BATCH * cut_after
        if cut_after < 4:
            assert set_aside(laptop) > 0
        assert await laptop.store.check() == []
        await laptop.sync()
        await check_same_index(laptop, server)
        assert set_aside(laptop) == 0
    finally:
        await laptop.close()
        await server.close()


async def test_an_older_laptop_looks_the_pairs_up_and_ends_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await seeded(tmp_path)
    monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", OLDER)
    lookups = Lookups(monkeypatch)
    laptop = await enrolled(tmp_path, server, "older", limits=SyncLimits(copy_batch_records=BATCH))
    try:
        assert lookups.calls > 0
        await check_same_index(laptop, server)
    finally:
        await laptop.close()
        await server.close()


async def test_a_laptop_of_this_version_with_an_older_server_looks_them_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = functools.partial(ServerProtocol, protocol_versions=(1, 2, 3, *OLDER))
    monkeypatch.setattr(caresync.server, "ServerProtocol", older)
    server = await seeded(tmp_path)
    lookups = Lookups(monkeypatch)
    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(copy_batch_records=BATCH))
    try:
        assert lookups.calls > 0
        await check_same_index(laptop, server)
    finally:
        await laptop.close()
        await server.close()


async def copy_by_hand(server: SyncServer, versions: tuple[int, ...]) -> list[CopyBatch]:
    """A whole first copy, asked by a hand-driven laptop speaking ``versions``."""
    client = await Hostile.connect(server.url, protocol_versions=versions)
    try:
        await client.login("dr.b", PASSWORD, "clinic-a")
        await client.enrol("by hand")
        batches: list[CopyBatch] = []
        after = None
        for _ in range(100):  # bounded: 16 records
            client.protocol.request_copy(after, BATCH, server.rulebook.fingerprint)
            batch = await client.expect(CopyBatch)
            assert isinstance(batch, CopyBatch)
            batches.append(batch)
            after = batch.last_record_id
            if batch.final:
                return batches
        raise AssertionError("a copy of more than 100 batches")
    finally:
        await client.close()


async def test_pairs_go_to_laptops_of_their_version_each_once_with_its_later_record(
    tmp_path: Path,
) -> None:
    server = await seeded(tmp_path)
    try:
        older = await copy_by_hand(server, OLDER)
        assert all(b.persons and b.pairs is None for b in older if b.records)
        newer = await copy_by_hand(server, (COPY_PAIRS_SINCE,))
        sent = [pair for b in newer for pair in b.pairs or ()]
        expected = [p.record_ids for p in await server.store.person_pairs()]
        assert sorted(sent) == sorted(expected)
        assert len(set(sent)) == len(sent)
        for b in newer:  # each with the batch holding its later record
            assert {pair.second for pair in b.pairs or ()} <= {r.record_id for r in b.records}
        assert any(pair.first < b.records[0].record_id for b in newer for pair in b.pairs or ())
    finally:
        await server.close()


def page_with(
    server: SyncServer, change: Callable[[CopyPage], list[tuple[str, str]]]
) -> Callable[..., Any]:
    """The server's copy_page, with each page's pairs changed by ``change``."""
    read_page = server.store.copy_page

    async def changed(organisation: str | None, **kwargs: Any) -> CopyPage:
        page = await read_page(organisation, **kwargs)
        return replace(page, pairs=change(page))

    return changed


async def test_a_record_added_behind_the_copy_is_paired_by_the_pull(tmp_path: Path) -> None:
    """A patient registered again on the server during the copy, with an id before the
    copy's cursor: the server's pairs name it with a later batch, the laptop holds no
    card of it yet and leaves that pair out (as a pair naming any record it does not
    hold, here also an id no record has), finishes the copy, and the pull after it
    brings the record and its pair."""
    server = await seeded(tmp_path)
    ids = sorted(await server.store.record_ids())
    twin_of = (await server.store.person_cards([ids[-1]]))[ids[-1]]
    again = Record.create(replica="desk-c", record_id="0-" + ids[0])  # before every id
    with again.batch():
        again.set("name", twin_of.display, author="registrar")
        again.set("birthDate", twin_of.birth_dates[0], author="registrar")
        again.set("gender", "female", author="registrar")
    added: list[str] = []

    def add_behind(page: CopyPage) -> list[tuple[str, str]]:
        second = page.records[0][0]
        return sorted([*page.pairs, ("0-no-such-record", second)], key=lambda p: (p[1], p[0]))

    read_page = page_with(server, add_behind)  # the store's own, pairs changed

    async def copy_page(organisation: str | None, **kwargs: Any) -> CopyPage:
        if kwargs.get("after") is not None and not added:
            # Registered while the copy runs, behind its cursor (one write, once).
            added.append(again.record_id)
            await server.store.write_remote(
                [
                    IncomingUpdate(
                        again.record_id,
                        again.update_since(),
                        conflict_rows(again, server.rulebook),
                        "clinic-a",
                        person_card(again),
                    )
                ],
                to_feed=True,
            )
        page: CopyPage = await read_page(organisation, **kwargs)
        return page

    server.store.copy_page = copy_page  # type: ignore[method-assign]
    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(copy_batch_records=BATCH))
    try:
        assert added
        pair = (again.record_id, ids[-1])
        assert pair in {p.record_ids for p in await server.store.person_pairs()}
        # enrol ran the copy, then the pull: the record and its pair are here.
        assert pair in {p.record_ids for p in await laptop.store.person_pairs()}
        await check_same_index(laptop, server)
    finally:
        await laptop.close()
        await server.close()


async def test_a_pair_the_cards_do_not_make_is_not_stored(tmp_path: Path) -> None:
    """The laptop scores each named pair from its own cards: a server cannot plant a
    possible duplicate, a link or a score."""
    server = await seeded(tmp_path)
    ids = sorted(await server.store.record_ids())
    paired = {p.record_ids for p in await server.store.person_pairs()}
    # Two records the server does not pair (two people), the later past the first batch.
    planted = next((a, b) for b in ids[BATCH:] for a in ids if a < b and (a, b) not in paired)

    def plant(page: CopyPage) -> list[tuple[str, str]]:
        if planted[1] not in {rid for rid, _ in page.records}:
            return page.pairs
        return sorted([*page.pairs, planted], key=lambda p: (p[1], p[0]))

    server.store.copy_page = page_with(server, plant)  # type: ignore[method-assign]
    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(copy_batch_records=BATCH))
    try:
        await check_same_index(laptop, server)
        held = {p.record_ids for p in await laptop.store.person_pairs()}
        assert planted not in held
    finally:
        await laptop.close()
        await server.close()


def test_the_wire_pair_is_two_ids() -> None:
    assert CopyPair._fields == ("first", "second")
