"""The SQLite change feed names each entry's record by key: the ids it remembers (what
this store committed or read) give the same items as reading every key's id."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from caresync.exceptions import CorruptDatabaseError
from caresync.storage import IncomingUpdate, SQLiteStore
from caresync.storage.sqlite import core as sqlite_core
from caresync.testing.store_data import Patient


async def fill(store: SQLiteStore, count: int) -> list[tuple[int, str]]:
    """``count`` records written to the feed, two entries each: (seq, record id)."""
    patients = [Patient(f"laptop-{i % 3}") for i in range(count)]
    seqs = await store.write_remote(
        [IncomingUpdate(p.id, p.created, None, "org-1") for p in patients], to_feed=True
    )
    edits = await store.write_remote(
        [IncomingUpdate(p.id, p.edit(), None, "org-1") for p in reversed(patients)],
        to_feed=True,
    )
    return sorted(
        [
            *zip(seqs, [p.id for p in patients], strict=True),
            *zip(edits, [p.id for p in reversed(patients)], strict=True),
        ]
    )


@pytest.mark.parametrize("kept", [2, 65_536])
async def test_the_feed_names_the_same_records_remembered_or_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    monkeypatch.setattr(sqlite_core, "_NAMES_KEPT", kept)
    path = tmp_path / "server.db"
    async with SQLiteStore.open(path) as store:
        expected = await fill(store, 12)
        assert len(store._names) <= kept
        assert [(i.seq, i.record_id) for i in await store.feed_since(0, limit=100)] == expected
        assert [(i.seq, i.record_id) for i in await store.feed_since(5, limit=7)] == [
            e for e in expected if e[0] > 5
        ][:7]
        assert len(store._names) <= kept
    # Another store on the file (another process) remembers nothing: it reads them.
    async with SQLiteStore.open(path) as other:
        assert other._names == {}
        assert [(i.seq, i.record_id) for i in await other.feed_since(0, limit=100)] == expected
        assert len(other._names) == min(12, kept)


async def test_a_feed_row_of_no_record_is_a_damaged_database(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    async with SQLiteStore.open(path) as store:
        await fill(store, 3)
    raw = sqlite3.connect(path)
    raw.execute("UPDATE feed SET rk = 999999 WHERE seq = 2")
    raw.commit()
    raw.close()
    async with SQLiteStore.open(path) as store:
        with pytest.raises(CorruptDatabaseError, match="row of no record"):
            await store.feed_since(0, limit=100)
