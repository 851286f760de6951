"""A record's state kept with its newest log row (SQLite schema 18): a write that appends
log rows rewrites no record's row, and every reader, the check, compaction and the
migration from version 17 see the record as of its newest write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pycrdt
from store_helpers import Patient, as_version_17, same_vector

from caresync.storage import SCHEMA_VERSION, CopiedRecords, IncomingUpdate, SQLiteStore


def _row(path: Path, record_id: str) -> tuple[object, ...]:
    conn = sqlite3.connect(path)
    try:
        row: tuple[object, ...] = conn.execute(
            "SELECT state_vector, pending, log_count, log_bytes, updated_ms, head_at"
            " FROM records WHERE record_id = ?",
            (record_id,),
        ).fetchone()
        return row
    finally:
        conn.close()


def _vector_of(updates: list[bytes]) -> bytes:
    doc: pycrdt.Doc = pycrdt.Doc()
    for update in updates:
        doc.apply_update(update)
    return doc.get_state()


async def _state_of(path: Path, record_id: str) -> tuple[bytes, bool, int]:
    """The record as a store opened afresh reads it (nothing cached)."""
    async with SQLiteStore.open(path) as store:
        assert len(store.cache) == 0
        vector, pending = (await store.state_vectors([record_id]))[record_id]
        return vector, pending, await store.log_length(record_id)


async def test_a_pull_into_a_stored_record_rewrites_no_record_row(tmp_path: Path) -> None:
    path = tmp_path / "laptop.db"
    p = Patient(replica="desk")
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ())])
    before = _row(path, p.id)
    edits = [p.edit("birthDate", "1990-04-12"), p.edit("name", "Awa Diop")]
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, edits[0], ())])
        await store.write_remote([IncomingUpdate(p.id, edits[1], ())])
        assert await store.check() == []
    assert _row(path, p.id) == before  # the record's row is as the first write left it
    vector, pending, length = await _state_of(path, p.id)
    assert same_vector(vector, _vector_of([p.created, *edits]))
    assert not same_vector(vector, bytes(before[0]))  # type: ignore[arg-type]
    assert (pending, length) == (False, 3)
    async with SQLiteStore.open(path) as store:
        assert await store.load(p.id) is not None
        assert same_vector((await store.state_vectors([p.id]))[p.id][0], vector)


async def test_an_update_waiting_for_another_is_marked_so_by_its_log_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "laptop.db"
    p = Patient(replica="desk")
    first, second = p.edit("birthDate", "1990-04-12"), p.edit("name", "Awa Diop")
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ())])
        await store.write_remote([IncomingUpdate(p.id, second, ())])  # before its parent
    assert (await _state_of(path, p.id))[1] is True
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, first, ())])
        assert await store.check() == []
    vector, pending, length = await _state_of(path, p.id)
    assert (pending, length) == (False, 3)
    assert same_vector(vector, _vector_of([p.created, first, second]))


async def test_a_record_written_both_ways_keeps_its_newest_state(tmp_path: Path) -> None:
    """Log rows, then a feed write (which rewrites the row and folds the rows in), then
    log rows again: each reader sees the newest; compaction makes the row whole again."""
    path = tmp_path / "replica.db"
    p = Patient(replica="desk")
    edits = [p.edit("birthDate", f"1990-04-1{n}") for n in range(4)]
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ())])
        await store.write_remote([IncomingUpdate(p.id, edits[0], ())])
        await store.write_remote([IncomingUpdate(p.id, edits[1], ())], to_feed=True)
        await store.write_remote([IncomingUpdate(p.id, edits[2], ())])
        await store.write_remote([IncomingUpdate(p.id, edits[3], ())])
        assert await store.check() == []
    vector, pending, length = await _state_of(path, p.id)
    assert same_vector(vector, _vector_of([p.created, *edits]))
    assert (pending, length) == (False, 5)
    state_vector, _, log_count, _, _, head_at = _row(path, p.id)
    assert log_count == 3  # the feed write folded the first two in
    assert head_at != 0
    assert not same_vector(bytes(state_vector), vector)  # type: ignore[arg-type]
    async with SQLiteStore.open(path) as store:
        assert await store.compact(p.id) == 5
        assert await store.check() == []
    state_vector, pending_flag, log_count, log_bytes, _, head_at = _row(path, p.id)
    assert same_vector(bytes(state_vector), vector)  # type: ignore[arg-type]
    assert (pending_flag, log_count, log_bytes, head_at) == (0, 0, 0, 0)
    assert await _state_of(path, p.id) == (vector, False, 0)
    async with SQLiteStore.open(path) as store:  # a write after compaction is a log row again
        later = p.edit("birthDate", "1990-04-20")
        await store.write_remote([IncomingUpdate(p.id, later, ())])
        assert await store.check() == []
    assert same_vector((await _state_of(path, p.id))[0], _vector_of([p.created, *edits, later]))


async def test_check_names_a_log_row_after_its_record_row_without_state(
    tmp_path: Path,
) -> None:
    path = tmp_path / "laptop.db"
    p = Patient(replica="desk")
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ())])
        await store.write_remote([IncomingUpdate(p.id, p.edit(), ())])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE log SET state_vector = NULL WHERE id = (SELECT MAX(id) FROM log)")
    conn.commit()
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert f"record {p.id}: a log row after its record's row carries no state" in (
            await store.check()
        )


async def test_a_version_17_database_migrates_with_each_records_state(tmp_path: Path) -> None:
    path = tmp_path / "laptop.db"
    patients = [Patient(replica="desk") for _ in range(3)]
    edits = {
        p.id: [p.edit("birthDate", f"1990-04-1{n}") for n in range(n)]
        for n, p in enumerate(patients)
    }
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ()) for p in patients])
        for p in patients:
            for update in edits[p.id]:
                await store.write_remote([IncomingUpdate(p.id, update, ())])
        expected = await store.state_vectors([p.id for p in patients])
    as_version_17(path)
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 17
        assert await store.check() == []
        assert await store.state_vectors([p.id for p in patients]) == expected
        for p in patients:
            assert await store.log_length(p.id) == 1 + len(edits[p.id])
    for p in patients:
        # Each record's counts hold its log rows, up to its newest (head_at).
        _, _, log_count, _, _, head_at = _row(path, p.id)
        assert log_count == 1 + len(edits[p.id])
        assert head_at != 0
    async with SQLiteStore.open(path) as store:
        p = patients[2]
        later = p.edit("name", "Awa Diop")
        await store.write_remote([IncomingUpdate(p.id, later, ())])
        assert await store.check() == []
    assert same_vector(
        (await _state_of(path, p.id))[0], _vector_of([p.created, *edits[p.id], later])
    )
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


async def test_a_version_17_database_of_every_kind_of_record_migrates_with_its_state(
    tmp_path: Path,
) -> None:
    """Compacted records (with and without later writes), a record only in the feed, one
    written both ways, a first copy's and one holding an update that waits: after the
    step from 17, each is what pycrdt makes of its updates, and later writes of each
    kind keep it so."""
    path = tmp_path / "replica.db"
    ps = {name: Patient(replica="desk") for name in ("compacted", "later", "fed", "both", "copy")}
    waits = Patient(replica="desk")
    given: dict[str, list[bytes]] = {p.id: [] for p in (*ps.values(), waits)}

    async def write(p: Patient, update: bytes, *, to_feed: bool = False) -> None:
        await store.write_remote([IncomingUpdate(p.id, update, ())], to_feed=to_feed)
        given[p.id].append(update)

    async with SQLiteStore.open(path) as store:
        for name in ("compacted", "later"):
            await write(ps[name], ps[name].created)
            await write(ps[name], ps[name].edit())
            await store.compact(ps[name].id)
        await write(ps["later"], ps["later"].edit())
        await write(ps["fed"], ps["fed"].created, to_feed=True)
        await write(ps["fed"], ps["fed"].edit(), to_feed=True)
        both = ps["both"]
        await write(both, both.created)
        await write(both, both.edit(), to_feed=True)
        await write(both, both.edit())
        copy = ps["copy"]
        copy.edit()
        whole = copy.record.update_since()
        await store.write_copy(
            CopiedRecords([copy.id], [whole], [_vector_of([whole])], None, {}, {})
        )
        given[copy.id].append(whole)
        await write(waits, waits.created)
        skipped = waits.edit()
        await write(waits, waits.edit())  # waits for the one skipped
        assert (await store.state_vectors([waits.id]))[waits.id][1] is True
        lengths = {rid: await store.log_length(rid) for rid in given}
    as_version_17(path)
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 17
        assert await store.check() == []
        vectors = await store.state_vectors(list(given))
        for rid, updates in given.items():
            assert same_vector(vectors[rid][0], _vector_of(updates)), rid
            assert vectors[rid][1] is (rid == waits.id), rid
            assert await store.log_length(rid) == lengths[rid], rid
        for p in ps.values():  # a pull, a feed write and an edit after the step
            await write(p, p.edit())
            await write(p, p.edit(), to_feed=True)
            update = p.edit()
            await store.write_local(p.id, update, conflicts=None)
            given[p.id].append(update)
        await write(waits, skipped)
        assert await store.check() == []
    for rid, updates in given.items():
        vector, pending, _ = await _state_of(path, rid)
        assert same_vector(vector, _vector_of(updates)), rid
        assert pending is False, rid


async def test_check_names_a_head_at_that_is_no_log_row_of_its_record(tmp_path: Path) -> None:
    """head_at is 0 or the id of one of its record's log rows (every write keeps it so).
    One past them passes for whole today, and hides every later write of the record:
    the check names it before that happens."""
    path = tmp_path / "replica.db"
    p = Patient(replica="desk")
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ())])
        await store.write_remote([IncomingUpdate(p.id, p.edit(), ())], to_feed=True)
        assert await store.check() == []
    conn = sqlite3.connect(path)
    conn.execute("UPDATE records SET head_at = head_at + 1000 WHERE record_id = ?", (p.id,))
    conn.commit()
    conn.close()
    async with SQLiteStore.open(path) as store:
        problems = await store.check()
        assert f"record {p.id}: its head_at names no log row of the record" in problems
        await store.write_remote([IncomingUpdate(p.id, p.edit(), ())])
        store.cache.clear()
        # What the check warned of: the write is there, and readers do not see it.
        assert not same_vector((await store.state_vectors([p.id]))[p.id][0], _vector_of(p.updates))


async def test_log_row_ids_given_again_after_compaction_stay_newer_than_each_head(
    tmp_path: Path,
) -> None:
    """Compaction deletes the table's highest log rows, and SQLite gives their ids out
    again (no AUTOINCREMENT): the record compacted has head_at 0, and any other record's
    head_at is one of its own rows, below the ids given again."""
    path = tmp_path / "replica.db"
    a, b = Patient(replica="desk"), Patient(replica="desk")
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(a.id, a.created, ())])
        await store.write_remote([IncomingUpdate(a.id, a.edit(), ())], to_feed=True)
        await store.write_remote([IncomingUpdate(a.id, a.edit(), ())])  # a's head_at: its row
        await store.write_remote([IncomingUpdate(b.id, b.created, ())])
        await store.write_remote([IncomingUpdate(b.id, b.edit(), ())])
    conn = sqlite3.connect(path)
    highest = conn.execute("SELECT MAX(id) FROM log").fetchone()[0]
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert await store.compact(b.id) == 2  # the table's highest rows go
        await store.write_remote([IncomingUpdate(a.id, a.edit(), ())])
        await store.write_remote([IncomingUpdate(b.id, b.edit(), ())])
        assert await store.check() == []
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(id) FROM log").fetchone()[0] <= highest  # given again
    conn.close()
    for p in (a, b):
        vector, pending, _ = await _state_of(path, p.id)
        assert same_vector(vector, _vector_of(p.updates))
        assert pending is False
