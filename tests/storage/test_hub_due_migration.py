"""Databases of the release before the hub state index (SQLite schema 13, PostgreSQL
schema 3) migrate: the index hub_outbox_due is built over the rows they hold, and the
sender's and the counters' reads answer from it at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from tests.postgres import fresh_schema

from caresync.storage import SCHEMA_VERSION, ServerStore, SQLiteStore
from caresync.storage.migrations import create_schema
from caresync.storage.postgres import PostgresStore
from caresync.storage.postgres.schema import FORMAT_VALUE, SCHEMA_STEPS
from caresync.storage.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION

_ROW = (
    "INSERT INTO hub_outbox (record_id, organisation, version, state, reason, sent_version,"
    " attempts, next_attempt_ms, last_attempt_ms, change)"
    " VALUES ({0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}, 1)"
)
_ROWS = [
    ("r-1", "org-1", 4, "sent", None, 4, 0, 0, 1_700_000_000_000),
    ("r-2", "org-1", 7, "held", "an open conflict", None, 0, 0, None),
    ("r-3", "org-2", 9, "pending", "retrying", None, 2, 5_000, 1_000),
    ("r-4", "org-2", 3, "pending", None, None, 0, 0, None),
    ("r-5", "org-1", 5, "failed", "the hub answered 400", None, 1, 0, 2_000),
    ("r-6", None, 6, "pending", "retrying", None, 1, 9_000, 3_000),
]


async def _answers_from_the_index(store: ServerStore) -> None:
    """The migrated outbox as the sender and the counters read it."""
    assert [r.record_id for r in await store.hub_due(6_000, 10)] == ["r-2", "r-4", "r-3"]
    assert [r.record_id for r in await store.hub_due(6_000, 10, after=(0, "r-4"))] == ["r-3"]
    assert await store.hub_next_attempt_ms() == 0
    assert await store.hub_state_counts() == {"pending": 3, "held": 1, "sent": 1, "failed": 1}
    assert await store.hub_state_counts("org-2") == {
        "pending": 2,
        "held": 0,
        "sent": 0,
        "failed": 0,
    }
    row = await store.hub_summary("r-3")
    assert row is not None
    assert (row.state, row.attempts, row.next_attempt_ms) == ("pending", 2, 5_000)
    assert await store.check() == []


async def test_a_version_13_sqlite_server_gains_the_hub_state_index(tmp_path: Path) -> None:
    path = tmp_path / "v13.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=13)
    conn.executemany(_ROW.format("?"), _ROWS)
    conn.execute("UPDATE hub_mark SET n = 1")
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "hub_outbox_due" not in indexes
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 13
        await _answers_from_the_index(store)
    conn = sqlite3.connect(path)
    [(sql,)] = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'hub_outbox_due'")
    assert sql == "CREATE INDEX hub_outbox_due ON hub_outbox (state, next_attempt_ms, record_id)"
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


async def test_a_version_3_postgresql_server_gains_the_hub_state_index(
    postgres_database: str,
) -> None:
    async with fresh_schema(postgres_database) as url:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            for step in (1, 2, 3):
                for statement in SCHEMA_STEPS[step]:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO caresync_schema (singleton, format, version) VALUES (1, %s, 3)",
                (FORMAT_VALUE,),
            )
            with conn.cursor() as cursor:
                cursor.executemany(_ROW.format("%s"), _ROWS)
            conn.execute("UPDATE hub_mark SET n = 1")
        async with PostgresStore.open(url) as store:
            assert store.migrated_from == 3
            await _answers_from_the_index(store)
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'hub_outbox_due'"
                " AND schemaname = current_schema()"
            ).fetchall()
            assert len(found) == 1
            assert "(state, next_attempt_ms, record_id)" in found[0][0]
            assert conn.execute("SELECT version FROM caresync_schema").fetchone() == (
                PG_SCHEMA_VERSION,
            )
