"""``write_copy``: a first copy's batch stored as ``write_remote`` would store it, without
planning each record in Python and without filling the record cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from caresync import Record
from caresync.exceptions import InvalidInputError, InvalidUpdateError
from caresync.records.crdt import state_vector_of
from caresync.records.persons import person_card
from caresync.storage import (
    ConflictRow,
    IncomingUpdate,
    MemoryStore,
    QuarantinedUpdate,
    SQLiteStore,
    Store,
)
from caresync.storage.base import CopiedRecords


def _charts(count: int) -> list[Record]:
    records = []
    for i in range(count):
        record = Record.create(replica="clinic-import")
        record.set("name", f"Patient {i}", author="import")
        record.set("birthDate", f"19{50 + i}-01-0{1 + i % 9}", author="import")
        records.append(record)
    return records


def _waiting(record: Record) -> bytes:
    """An edit of ``record`` whose first part is missing: it waits (pending)."""
    seen = record.state_vector()
    record.set("gender", "female", author="import")
    middle = record.state_vector()
    record.set("gender", "male", author="import")
    return record.update_since(middle) if seen != middle else b""


def _batch(records: list[Record]) -> CopiedRecords:
    ids = [r.record_id for r in records]
    updates = [r.update_since() for r in records]
    # The last record holds only a later edit of itself: items that wait.
    updates[-1] = _waiting(records[-1])
    rows = {
        ids[1]: (ConflictRow("c-1", ids[1], "finding", "name", "info", b"{}"),),
        ids[2]: (),
    }
    persons = {r.record_id: person_card(r) for r in records[:3]}
    vectors = [state_vector_of(u) for u in updates]
    return CopiedRecords(ids, updates, vectors, "clinic-a", rows, persons)


async def _everything(store: Store, ids: list[str]) -> tuple[object, ...]:
    return (
        await store.load_many(ids),
        await store.state_vectors(ids),
        await store.conflict_rows(ids),
        await store.person_cards(ids),
        await store.person_pairs(),
        [(q.record_id, q.update, q.reason) for q in await store.quarantined()],
        await store.get_meta("copy.resume"),
        [await store.log_length(rid) for rid in ids],
        await store.record_organisations(ids),
        await store.count_conflicts(),
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_copied_batch_is_stored_as_write_remote_stores_it(
    kind: str, tmp_path: Path
) -> None:
    records = _charts(5)
    batch = _batch(records)
    ids = list(batch.record_ids)
    aside = (QuarantinedUpdate("rec-bad", b"\x01 not an update", "not an update"),)
    found = []
    for way in ("write_remote", "write_copy"):
        store: Store
        if kind == "memory":
            store = await MemoryStore.open()
        else:
            store = await SQLiteStore.open(tmp_path / f"{way}.db")
        if way == "write_remote":
            await store.write_remote(
                [
                    IncomingUpdate(
                        rid,
                        u,
                        batch.conflicts.get(rid, ()),
                        "clinic-a",
                        batch.persons.get(rid),
                        v,
                    )
                    for rid, u, v in zip(ids, batch.updates, batch.state_vectors, strict=True)
                ],
                checkpoint=("copy.resume", ids[-1]),
                quarantine=aside,
            )
        else:
            await store.write_copy(batch, checkpoint=("copy.resume", ids[-1]), quarantine=aside)
        found.append(await _everything(store, ids))
        await store.close()
    assert found[0] == found[1]
    vectors = found[1][1]
    assert isinstance(vectors, dict)
    assert vectors[ids[-1]][1] is True  # the record with waiting items says so
    assert vectors[ids[0]][1] is False


async def test_the_sqlite_copy_neither_fills_nor_evicts_the_record_cache(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "laptop.db") as store:
        live = _charts(1)[0]
        await store.write_remote([IncomingUpdate(live.record_id, live.update_since(), ())])
        assert store.cache.get(live.record_id) is not None
        batch = _batch(_charts(4))
        await store.write_copy(batch, checkpoint=("copy.resume", "x"))
        assert len(store.cache) == 1
        assert store.cache.get(live.record_id) is not None
        assert set(await store.load_many(list(batch.record_ids))) == set(batch.record_ids)


async def test_a_batch_naming_a_stored_record_merges_it_the_ordinary_way(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "laptop.db") as store:
        records = _charts(3)
        mine = records[1]
        before = mine.update_since()
        await store.write_remote([IncomingUpdate(mine.record_id, before, ())])
        seen = mine.state_vector()
        mine.set("address/city", "Thiès", author="dr.a")
        later = mine.update_since(seen)
        # The copy brings the record's later state only; what was stored stays.
        ids = [r.record_id for r in records]
        updates = [records[0].update_since(), later, records[2].update_since()]
        vectors = [state_vector_of(u) for u in updates]
        await store.write_copy(
            CopiedRecords(ids, updates, vectors, None, {}, {}), checkpoint=("copy.resume", "z")
        )
        stored = await store.load(mine.record_id)
        assert stored is not None
        merged = Record.from_update(mine.record_id, stored, replica="x")
        assert merged.value("name") == "Patient 1"
        assert merged.value("address/city") == "Thiès"
        assert await store.get_meta("copy.resume") == "z"
        assert set(await store.record_ids()) == set(ids)


async def test_a_failed_copy_commit_stores_nothing_of_the_batch(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "laptop.db") as store:
        records = _charts(3)
        ids = [r.record_id for r in records]
        updates = [r.update_since() for r in records]
        vectors = [state_vector_of(u) for u in updates]
        updates[2] = b"\x05 garbage that is no update"  # fails inside the transaction
        with pytest.raises(InvalidUpdateError):
            await store.write_copy(
                CopiedRecords(ids, updates, vectors, None, {}, {}),
                checkpoint=("copy.resume", ids[-1]),
            )
        assert await store.record_ids() == []
        assert await store.get_meta("copy.resume") is None


@pytest.mark.parametrize(
    ("why", "make"),
    [
        ("lengths differ", lambda ids, u, v: CopiedRecords(ids, u[:-1], v, None, {}, {})),
        ("a record twice", lambda ids, u, v: CopiedRecords(ids * 2, u * 2, v * 2, None, {}, {})),
        ("an empty id", lambda ids, u, v: CopiedRecords(["", *ids[1:]], u, v, None, {}, {})),
        ("a str update", lambda ids, u, v: CopiedRecords(ids, ["x", *u[1:]], v, None, {}, {})),
        (
            "rows of another record",
            lambda ids, u, v: CopiedRecords(
                ids, u, v, None, {"other": (ConflictRow("c", "other", "k", "s", "info", b""),)}, {}
            ),
        ),
        (
            "a card of another record",
            lambda ids, u, v: CopiedRecords(
                ids, u, v, None, {}, {ids[0]: person_card(_charts(1)[0])}
            ),
        ),
    ],
)
def test_a_malformed_batch_is_refused(why: str, make: object) -> None:
    records = _charts(2)
    ids = [r.record_id for r in records]
    updates = [r.update_since() for r in records]
    vectors = [state_vector_of(u) for u in updates]
    with pytest.raises(InvalidInputError):
        make(ids, updates, vectors)  # type: ignore[operator]
