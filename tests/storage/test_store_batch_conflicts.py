"""Conflict rows of many records in one SQLite transaction: set_conflicts_many, an import.

SQLite's own trace of the statements it runs shows how many transactions a
call made: one ``COMMIT`` each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from store_helpers import Patient, conflict

from caresync import UnknownRecordError
from caresync.storage import IncomingUpdate, MemoryStore, SQLiteStore

RECORDS = 1100  # past two lookups of 500 ids


@asynccontextmanager
async def traced(store: SQLiteStore) -> AsyncIterator[list[str]]:
    """The statements the store's connection runs meanwhile (on its own thread)."""
    statements: list[str] = []

    def install(callback: Callable[[str], object] | None) -> Callable[[sqlite3.Connection], None]:
        return lambda raw: raw.set_trace_callback(callback)

    await store._run("tracing", install(statements.append))
    try:
        yield statements
    finally:
        await store._run("tracing", install(None))


def commits(statements: list[str]) -> int:
    return sum(1 for s in statements if s.strip().upper() == "COMMIT")


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
        assert commits(statements) == 1
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
        assert commits(statements) == 1
        inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO CONFLICTS")]
        assert inserts  # the rows were written inside that one transaction
        assert await store.conflict_rows([p.id, q.id]) == {p.id: (conflict(p.id),)}
        assert await store.pending_count() == 4
