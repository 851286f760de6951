"""Servers of the release before password marks (SQLite schema 19, PostgreSQL schema 6)
migrate with their accounts: each gets a random mark of its own, which laptops are told
from then on (protocol version 16), and which a new password changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from tests.postgres import fresh_schema

from caresync.storage import ServerStore, SQLiteStore
from caresync.storage.base import PASSWORD_MARK_BYTES
from caresync.storage.migrations import create_schema
from caresync.storage.postgres import PostgresStore
from caresync.storage.postgres.schema import FORMAT_VALUE, SCHEMA_STEPS

_USER = (
    "INSERT INTO users (organisation, username, password_hash, created_ms, disabled_ms,"
    " display_name) VALUES ({0}, {0}, {0}, 1, {0}, {0})"
)
_USERS = [
    ("clinic", "dr.a", "hash-a", None, "Dr A"),
    ("clinic", "dr.b", "hash-b", 5, None),
    ("other", "dr.c", "hash-c", None, None),
]


async def _marked(store: ServerStore) -> None:
    """Every migrated account has a mark of its own; a new password changes it."""
    clinic = await store.account_standings("clinic")
    other = await store.account_standings("other")
    assert sorted(clinic) == ["dr.a", "dr.b"]
    assert (clinic["dr.a"].display_name, clinic["dr.a"].disabled) == ("Dr A", False)
    assert (clinic["dr.b"].display_name, clinic["dr.b"].disabled) == ("dr.b", True)
    marks = {s.password_mark for s in (*clinic.values(), *other.values())}
    assert len(marks) == 3
    assert all(len(mark) == PASSWORD_MARK_BYTES for mark in marks)
    assert await store.account_standings("clinic") == clinic  # stable between reads
    await store.set_password_hash("clinic", "dr.a", "new-hash")
    after = await store.account_standings("clinic")
    assert after["dr.a"].password_mark not in marks
    assert after["dr.b"] == clinic["dr.b"]


async def test_a_version_19_sqlite_server_gives_its_accounts_marks(tmp_path: Path) -> None:
    path = tmp_path / "v19.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=19)
    conn.executemany(_USER.format("?"), _USERS)
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 19
        await _marked(store)
        assert await store.check() == []


async def test_a_version_6_postgresql_server_gives_its_accounts_marks(
    postgres_database: str,
) -> None:
    async with fresh_schema(postgres_database) as url:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            for step in range(1, 7):
                for statement in SCHEMA_STEPS[step]:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO caresync_schema (singleton, format, version) VALUES (1, %s, 6)",
                (FORMAT_VALUE,),
            )
            with conn.cursor() as cursor:
                cursor.executemany(_USER.format("%s"), _USERS)
        async with PostgresStore.open(url) as store:
            assert store.migrated_from == 6
            await _marked(store)
            assert await store.check() == []
