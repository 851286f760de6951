"""The audit trail in the SQLite store: append-only in the file itself.

What every store does with the audit trail (appended with what it records, chained; a
server keeps other replicas' chains, resends once, a restored copy as a new line) is in
the conformance suite, :mod:`caresync.testing.store_suite`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from caresync.storage import SQLiteStore
from caresync.testing.store_data import READ, WRITE, set_laptop_identity


async def test_the_sqlite_trail_cannot_be_changed_or_removed(tmp_path: Path) -> None:
    path = tmp_path / "laptop.db"
    async with SQLiteStore.open(path) as store:
        await set_laptop_identity(store)
        await store.append_audit([READ, WRITE])
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE audit_trail SET actor = 'dr.b'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM audit_trail")
    finally:
        raw.close()
    async with SQLiteStore.open(path) as store:
        assert [e.actor for e in await store.audit_entries()] == ["dr.a", "dr.a"]
