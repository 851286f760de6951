"""Conflict rows of many records in one SQLite transaction: set_conflicts_many, an import.

SQLite's own trace of the statements it runs shows how many write
transactions a call made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import Patient, conflict
from tests.sqlite_trace import traced, write_transactions

from caresync import UnknownRecordError
from caresync.storage import IncomingUpdate, MemoryStore, SQLiteStore

RECORDS = 1100  # past two lookups of 500 ids


async def stored_patients(path: Path, count: int) -> list[Patient]:
    """``count`` records written in one batch, then the store closed (a cold cache after)."""
    patients = [Patient() for _ in range(count)]
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, None) for p in patients])
    return patients


async def test_rows_of_many_records_are_one_transaction(tmp_path: Path) -> None:
    patients = await stored_patients(tmp_path / "r.db", RECORDS)
    rows = {p.id: [conflict(p.id, 1), conflict(p.id, 2)] for p in patients}
    async with SQLiteStore.open(tmp_path / "r.db") as store:
        async with traced(store) as statements:
            await store.set_conflicts_many(rows)
        assert len(write_transactions(statements)) == 1
        assert await store.count_conflicts() == 2 * RECORDS
        assert await store.check() == []


async def test_an_unknown_record_past_the_first_lookups_stores_nothing(tmp_path: Path) -> None:
    patients = await stored_patients(tmp_path / "r.db", RECORDS)
    stranger = Patient()
    rows = {p.id: [conflict(p.id)] for p in patients}
    rows[stranger.id] = []  # last: checked in the third lookup
    async with SQLiteStore.open(tmp_path / "r.db") as store:
        with pytest.raises(UnknownRecordError, match=stranger.id):
            await store.set_conflicts_many(rows)
        assert await store.count_conflicts() == 0


async def test_an_import_commits_its_records_and_their_rows_together(tmp_path: Path) -> None:
    p, q = Patient(), Patient()
    source = MemoryStore()
    for patient in (p, q):
        await source.write_local(patient.id, patient.created, conflicts=None, organisation="o")
        await source.write_local(patient.id, patient.edit(), conflicts=None)
    export = tmp_path / "unsynced.caresync"
    await source.export_unsynced(export)
    async with SQLiteStore.open(tmp_path / "laptop.db") as store:
        async with traced(store) as statements:
            await store.import_unsynced(export, conflicts={p.id: [conflict(p.id)]})
        assert len(write_transactions(statements)) == 1
        [inside] = write_transactions(statements)
        assert any("INTO conflicts " in s for s in inside)  # the rows, in that transaction
        assert await store.conflict_rows([p.id, q.id]) == {p.id: (conflict(p.id),)}
        assert await store.pending_count() == 4
