"""``copy_page``: a first copy's page read in one go, as stored, past the record cache."""

from __future__ import annotations

import pytest

from caresync import Record
from caresync.exceptions import InvalidInputError
from caresync.records.persons import person_card
from caresync.storage import ConflictRow, IncomingUpdate, SQLiteStore, Store


def _chart(name: str) -> Record:
    record = Record.create(replica="clinic-import")
    record.set("name", name, author="import")
    return record


async def _fill(store: Store, count: int, organisation: str | None) -> list[Record]:
    records = [_chart(f"Patient {organisation} {i}") for i in range(count)]
    await store.write_remote(
        [
            IncomingUpdate(
                r.record_id,
                r.update_since(),
                (ConflictRow(f"c-{i}", r.record_id, "finding", "name", "info", b"{}"),)
                if i % 2
                else (),
                organisation,
                person_card(r),
            )
            for i, r in enumerate(records)
        ],
        to_feed=True,
    )
    return records


async def test_pages_give_every_record_of_the_organisation_once_in_order_as_stored(
    store: Store,
) -> None:
    ours = await _fill(store, 7, "clinic-a")
    await _fill(store, 5, "clinic-b")
    # A later edit of one record: stored as a second update, merged in the page.
    edited = ours[3]
    before = edited.state_vector()
    edited.set("gender", "female", author="import")
    await store.write_remote(
        [IncomingUpdate(edited.record_id, edited.update_since(before), None, "clinic-a")],
        to_feed=True,
    )
    expected = await store.load_many(sorted(r.record_id for r in ours))
    seen: list[tuple[str, bytes]] = []
    after: str | None = None
    pages = 0
    for _ in range(10):  # bounded: 7 records in pages of 3
        page = await store.copy_page("clinic-a", after=after, limit=3, rows=False, persons=False)
        pages += 1
        assert page.rows == {}
        assert page.cards == {}
        seen.extend(page.records)
        if not page.more:
            break
        after = page.records[-1][0]
    assert pages == 3
    assert seen == list(expected.items())
    copied = Record.from_update(edited.record_id, dict(seen)[edited.record_id], replica="x")
    assert copied.value("gender") == "female"


async def test_a_page_carries_its_records_rows_and_cards_as_stored(store: Store) -> None:
    records = await _fill(store, 6, None)
    ids = sorted(r.record_id for r in records)
    page = await store.copy_page(None, after=ids[0], limit=4, rows=True, persons=True)
    assert [rid for rid, _ in page.records] == ids[1:5]
    assert page.more
    stored_rows = await store.conflict_rows(ids[1:5])
    assert page.rows == {
        rid: [(r.record_id, r.id, r.kind, r.subject, r.severity, r.payload) for r in rows]
        for rid, rows in stored_rows.items()
    }
    assert page.rows  # some records of the page have rows, the others none
    assert page.cards == await store.person_card_bytes(ids[1:5])
    assert len(page.cards) == 4
    last = await store.copy_page(None, after=ids[4], limit=4, rows=True, persons=True)
    assert [rid for rid, _ in last.records] == ids[5:]
    assert not last.more
    assert (
        await store.copy_page(None, after=ids[5], limit=4, rows=True, persons=True)
    ).records == []


async def test_a_page_refuses_a_bad_limit(store: Store) -> None:
    with pytest.raises(InvalidInputError):
        await store.copy_page(None, after=None, limit=-1, rows=False, persons=False)


async def test_the_sqlite_page_neither_fills_nor_evicts_the_record_cache(store: Store) -> None:
    if not isinstance(store, SQLiteStore):
        pytest.skip("the memory store has no record cache")
    records = await _fill(store, 6, None)
    store.cache.clear()
    live = records[0].record_id
    await store.load(live)  # a record a live replica uses: cached
    page = await store.copy_page(None, after=None, limit=6, rows=True, persons=True)
    assert len(page.records) == 6
    assert len(store.cache) == 1
    assert store.cache.get(live) is not None
