"""A first copy with the server's person pairs (protocol version 12) leaves the laptop's
person index exactly as the copy that finds the pairs itself: the same cards, card
bytes, blocking keys, pairs, pair counts and link decisions.

The server's pairs come from its own index: records written to a server store one by
one (in random order), then read page by page (``copy_page(pairs=True)``), as a server
sends them. Generated patients include near-duplicates across batch boundaries, link
decisions (same person, two people, undone, in conflict) and two organisations.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.storage.test_copy_persons import clinics

from caresync import Record
from caresync.exceptions import InvalidInputError
from caresync.records.crdt import state_vector_of
from caresync.records.persons import PairState, PersonCard, person_card
from caresync.storage import IncomingUpdate, MemoryStore, SQLiteStore, Store
from caresync.storage.base import CopiedRecords, CopyPage
from caresync.testing.store_data import oracle

ORGS = ("org-1", "org-2")


async def serve(store: Store, records: list[tuple[Record, str]], seed: int) -> None:
    """The records written to a server store one by one, in an order of ``seed``."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    for i in order:
        record, org = records[i]
        await store.write_remote(
            [
                IncomingUpdate(
                    record.record_id, record.update_since(), None, org, person_card(record)
                )
            ]
        )


async def pages(server: Store, org: str, size: int) -> list[CopyPage]:
    """The copy's pages of one organisation, as a server reads them."""
    found: list[CopyPage] = []
    after = None
    for _ in range(10_000):  # bounded: each page moves past at least one record
        page = await server.copy_page(
            org, after=after, limit=size, rows=False, persons=True, pairs=True
        )  # type: ignore[attr-defined]
        if page.records:
            found.append(page)
            after = page.records[-1][0]
        if not page.more:
            return found
    raise AssertionError("a copy of more than 10,000 pages")


def copied(org: str, page: CopyPage, *, with_pairs: bool) -> CopiedRecords:
    """A page as the laptop stores it: cards parsed from the bytes sent, and the
    server's pairs (or None, the laptop finds them)."""
    ids = [rid for rid, _ in page.records]
    updates = [update for _, update in page.records]
    return CopiedRecords(
        ids,
        updates,
        [state_vector_of(u) for u in updates],
        org,
        {},
        {rid: PersonCard.from_bytes(data) for rid, data in page.cards.items()},
        dict(page.cards),
        list(page.pairs) if with_pairs else None,
    )


async def copy_into(
    laptop: Store,
    server: Store,
    size: int,
    *,
    with_pairs: bool,
    orgs: tuple[str, ...] = ORGS,
    mark_last: bool = False,
) -> None:
    """The copy of ``orgs``, page by page; ``mark_last``: its last page is marked so
    (``CopiedRecords.last``), as a laptop marks a copy's final batch."""
    batches = [(org, page) for org in orgs for page in await pages(server, org, size)]
    for n, (org, page) in enumerate(batches, start=1):
        last = page.records[-1][0]
        batch = copied(org, page, with_pairs=with_pairs)
        if mark_last and n == len(batches):
            batch = replace(batch, last=True)
        await laptop.write_copy(batch, checkpoint=("copy.resume", last))


def key_rows(path: Path, table: str = "person_keys") -> list[tuple[int, str]]:
    """The laptop's blocking key rows in ``table``, as (hash, record id)."""
    conn = sqlite3.connect(path)
    try:
        return sorted(
            conn.execute(f"SELECT k.hash, r.record_id FROM {table} k JOIN records r ON r.rk = k.rk")
        )
    finally:
        conn.close()


def index_rows(path: Path) -> list[tuple[int, str]]:
    """The laptop's whole key index: its rows and those a first copy set aside (schema
    version 17), each once."""
    return sorted({*key_rows(path), *key_rows(path, "person_keys_copied")})


async def index(store: Store, ids: list[str]) -> tuple[object, ...]:
    return (
        await store.person_cards(ids),
        await store.person_card_bytes(ids),
        await store.person_pairs(),
        [await store.count_person_pairs(state) for state in (None, *PairState)],
        await store.check(),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics(), st.integers(1, 9), st.integers(0, 2**32))
def test_a_copy_with_the_servers_pairs_leaves_the_index_of_a_copy_that_finds_them(
    records: list[tuple[Record, str]], size: int, seed: int
) -> None:
    ids = sorted(record.record_id for record, _org in records)

    async def run(folder: Path) -> None:
        async with SQLiteStore.open(folder / "server.db") as server:
            await serve(server, records, seed)
            memory_server = await MemoryStore.open()
            await serve(memory_server, records, seed + 1)
            for org in ORGS:  # the memory server reads the same pages, pairs and all
                assert [p.pairs for p in await pages(memory_server, org, size)] == [
                    p.pairs for p in await pages(server, org, size)
                ]
            await memory_server.close()
            found = []
            for name, with_pairs in (("named.db", True), ("found.db", False)):
                async with SQLiteStore.open(folder / name) as laptop:
                    await copy_into(laptop, server, size, with_pairs=with_pairs)
                    found.append(await index(laptop, ids))
                found.append(index_rows(folder / name))
            # The copy with the server's pairs, its last batch marked: its key rows were
            # set aside batch after batch (schema 17), then moved into the index at once.
            async with SQLiteStore.open(folder / "last.db") as laptop:
                await copy_into(laptop, server, size, with_pairs=True, mark_last=True)
                at_the_end = await index(laptop, ids)
            found.append(await index(server, ids))
        named, named_keys, computed, computed_keys, on_server = found
        assert named == computed
        assert named_keys == computed_keys  # the rows set aside are the index's rows
        assert key_rows(folder / "found.db", "person_keys_copied") == []
        assert at_the_end == computed
        assert key_rows(folder / "last.db") == computed_keys
        assert key_rows(folder / "last.db", "person_keys_copied") == []
        assert named == on_server  # the laptop's index is the server's
        assert named[2] == oracle(
            {record.record_id: (org, person_card(record)) for record, org in records}
        )

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))


def twice_registered() -> list[tuple[Record, str]]:
    """Patient A registered twice and patient B twice: two pairs, the second record of
    each pair in the second batch of two."""
    people = []
    for name, birth in (("Awa Ndiaye", "1990-04-12"), ("Moussa Diallo", "1985-07-01")):
        for _ in range(2):
            record = Record.create(replica="desk-a")
            with record.batch():
                record.set("name", name, author="dr.a")
                record.set("birthDate", birth, author="dr.a")
            people.append((record, "org-1"))
    return people


async def test_the_laptop_compares_only_the_pairs_the_server_names(tmp_path: Path) -> None:
    """Pairs the server leaves out are not looked for (the laptop trusts what its
    server's index holds, as it does its conflict rows); a pair the server names that
    the two cards do not make is not stored (the laptop scores it itself)."""
    records = twice_registered()
    async with SQLiteStore.open(tmp_path / "server.db") as server:
        await serve(server, records, 0)
        kept = await server.person_pairs()
        assert len(kept) == 2
        hidden = kept[0].record_ids
        apart = {r.record_id for r, _ in records} - set(hidden)
        planted = (min(hidden[0], min(apart)), max(hidden[0], min(apart)))  # two people
        async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
            for page in await pages(server, "org-1", 2):
                ids = [rid for rid, _ in page.records]
                told = [p for p in page.pairs if p != hidden]
                if planted[1] in ids:
                    told = sorted({*told, planted}, key=lambda p: (p[1], p[0]))
                await laptop.write_copy(replace(copied("org-1", page, with_pairs=True), pairs=told))
            assert await laptop.person_pairs() == kept[1:]
            assert await laptop.check() == []


async def test_unacknowledged_local_changes_make_the_laptop_find_the_pairs(
    tmp_path: Path,
) -> None:
    """A laptop holding a change its server has not acknowledged (a record registered
    here, in the outbox) pairs the copy against it: the server's pairs cannot hold it."""
    [(here, _), (there, _), *_rest] = twice_registered()
    async with SQLiteStore.open(tmp_path / "server.db") as server:
        await serve(server, [(there, "org-1")], 0)
        assert await server.person_pairs() == []
        async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
            await laptop.write_local_many(
                [
                    IncomingUpdate(
                        here.record_id, here.update_since(), None, "org-1", person_card(here)
                    )
                ]
            )
            await copy_into(laptop, server, 2, with_pairs=True, orgs=("org-1",))
            [pair] = await laptop.person_pairs()
            assert set(pair.record_ids) == {here.record_id, there.record_id}
            assert pair.state is PairState.POSSIBLE
            assert await laptop.check() == []


async def test_a_pair_naming_a_record_without_a_card_here_stores_nothing(
    tmp_path: Path,
) -> None:
    [(record, _), *_rest] = twice_registered()
    update = record.update_since()
    card = person_card(record)
    batch = CopiedRecords(
        [record.record_id],
        [update],
        [state_vector_of(update)],
        "org-1",
        {},
        {record.record_id: card},
        {},
        [("0-not-here", record.record_id)],
    )
    async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
        with pytest.raises(
            InvalidInputError, match="names record 0-not-here, which holds no person card"
        ):
            await laptop.write_copy(batch, checkpoint=("copy.resume", record.record_id))
        assert await laptop.record_ids() == []
        assert await laptop.person_cards([record.record_id]) == {}
        assert await laptop.get_meta("copy.resume") is None


@pytest.mark.parametrize(
    "pair",
    [
        ("b", "a"),  # not first < second
        ("a", "z"),  # second not in the batch
        ("0", "b"),  # second has no card in the batch
        ["0", "a"],  # not a tuple
        ("0", 7),
    ],
)
def test_copied_pairs_must_name_a_carded_record_of_the_batch_second(pair: object) -> None:
    one = Record.create(replica="desk-a", record_id="a")
    one.set("name", "Awa Ndiaye", author="dr.a")
    two = Record.create(replica="desk-a", record_id="b")
    updates = [one.update_since(), two.update_since()]
    with pytest.raises(InvalidInputError, match="person pair"):
        CopiedRecords(
            ["a", "b"],
            updates,
            [state_vector_of(u) for u in updates],
            None,
            {},
            {"a": person_card(one)},
            {},
            [pair],  # type: ignore[list-item]
        )
