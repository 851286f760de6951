"""Databases of the release before hub marks (SQLite schema 12, PostgreSQL schema 2)
migrate with their hub outbox: every row at mark 1, the store's mark 1 (0 when the outbox
is empty), and writes after the migration take the next marks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from tests.postgres import fresh_schema

from caresync.storage import HubChanges, HubMark, IncomingUpdate, ServerStore, SQLiteStore
from caresync.storage.migrations import create_schema
from caresync.storage.postgres import PostgresStore
from caresync.storage.postgres.schema import FORMAT_VALUE, SCHEMA_STEPS
from caresync.testing.store_data import Patient, whole

_ROW = (
    "INSERT INTO hub_outbox (record_id, organisation, version, state, reason, sent_version,"
    " attempts, next_attempt_ms, last_attempt_ms) VALUES ({0}, {0}, {0}, {0}, {0}, {0}, 0, 0, {0})"
)
_ROWS = [
    ("r-1", "org-1", 4, "sent", None, 4, 1_700_000_000_000),
    ("r-2", "org-1", 7, "held", "an open conflict", None, None),
    ("r-3", "org-2", 9, "pending", None, None, None),
]


async def _carries_on(store: ServerStore) -> None:
    """The migrated outbox as hub_changes reads it, and a write after it."""
    everything = await store.hub_changes("org-1", 0, 10)
    assert sorted(r.record_id for r in everything.rows) == ["r-1", "r-2"]
    assert everything.mark == 1
    assert await store.hub_changes("org-1", 1, 10) == HubChanges((), (), 1, False)
    p = Patient("laptop-a")
    await store.write_remote(
        [IncomingUpdate(p.id, whole(p), None, "org-1")], to_feed=True, hub={p.id: HubMark(True)}
    )
    [row] = (await store.hub_changes("org-1", 1, 10)).rows
    assert row.record_id == p.id
    assert (await store.hub_changes("org-1", 1, 10)).mark == 2
    assert [r.record_id for r in await store.hub_summaries("org-1")] == sorted(["r-1", "r-2", p.id])


async def test_a_version_12_sqlite_server_migrates_its_hub_outbox(tmp_path: Path) -> None:
    path = tmp_path / "v12.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=12)
    conn.executemany(_ROW.format("?"), _ROWS)
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 12
        await _carries_on(store)
        assert await store.check() == []


async def test_an_empty_version_12_outbox_migrates_to_mark_0(tmp_path: Path) -> None:
    path = tmp_path / "v12.db"
    conn = sqlite3.connect(path, isolation_level=None)
    create_schema(conn, now_ms=1, version=12)
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert await store.hub_changes("org-1", 0, 10) == HubChanges((), (), 0, False)


async def test_a_version_2_postgresql_server_migrates_its_hub_outbox(
    postgres_database: str,
) -> None:
    async with fresh_schema(postgres_database) as url:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            for step in (1, 2):
                for statement in SCHEMA_STEPS[step]:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO caresync_schema (singleton, format, version) VALUES (1, %s, 2)",
                (FORMAT_VALUE,),
            )
            with conn.cursor() as cursor:
                cursor.executemany(_ROW.format("%s"), _ROWS)
        async with PostgresStore.open(url) as store:
            assert store.migrated_from == 2
            await _carries_on(store)
            assert await store.check() == []


async def test_check_names_hub_marks_out_of_step(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    async with SQLiteStore.open(path) as store:
        p = Patient("laptop-a")
        await store.write_remote(
            [IncomingUpdate(p.id, whole(p), None, "org-1")], to_feed=True, hub={p.id: HubMark(True)}
        )
        assert await store.check() == []
    conn = sqlite3.connect(path)
    conn.execute("UPDATE hub_outbox SET change = 5")
    conn.execute(
        "INSERT INTO hub_removed (organisation, record_id, version, change)"
        " VALUES ('org-1', ?, 1, 1)",
        (p.id,),
    )
    conn.commit()
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert await store.check() == [
            "1 hub outbox rows carry a mark not given out yet",
            "1 patients are both listed and removed in one organisation's hub outbox",
        ]
