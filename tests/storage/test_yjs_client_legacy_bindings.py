"""Yjs client bindings written before per-record ones (SQLite schema 20, PostgreSQL 7)
migrate without being copied: a client's deployment-wide row binds it in a record whose
stored state vector lists it, and says nothing of any other record."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pycrdt
import pytest
from tests.postgres import fresh_schema

from caresync.exceptions import RefusedUpdateError
from caresync.records import record as record_module
from caresync.storage import IncomingUpdate, ServerStore, SQLiteStore
from caresync.storage.postgres import PostgresStore
from caresync.testing.store_data import Patient

CLIENT = 2**40 + 17


def _patient_as(client: int) -> Patient:
    """A record created (and later edited) as Yjs client ``client``."""

    def doc() -> pycrdt.Doc[Any]:
        return pycrdt.Doc(client_id=client)

    with mock.patch.object(record_module, "Doc", doc):
        return Patient("laptop-1")


async def _write(store: ServerStore, *patients: Patient) -> None:
    items = [IncomingUpdate(p.id, p.created, None, "clinic") for p in patients]
    await store.write_remote(items, to_feed=True)


async def _legacy_row_binds_only_where_the_record_holds_the_client(
    store: ServerStore, held: Patient, other: Patient
) -> None:
    """``held`` holds CLIENT's ops (bound to laptop-1 by a legacy row); ``other`` does not."""
    pairs = [(held.id, CLIENT), (other.id, CLIENT), (held.id, 5)]
    assert await store.client_owners(pairs) == {(held.id, CLIENT): "laptop-1"}
    # A forger's claim where the owner wrote is refused, in the transaction, nothing stored.
    head = await store.feed_head()
    forged = IncomingUpdate(held.id, held.edit("birthDate", "1880"), None, "clinic")
    with pytest.raises(RefusedUpdateError, match=f"record {held.id}"):
        await store.write_remote([forged], to_feed=True, claim_clients={(held.id, CLIENT): "x"})
    assert await store.feed_head() == head
    # The client is new to the other record: whoever writes with it first there has it.
    edit = IncomingUpdate(other.id, other.edit("birthDate", "1990"), None, "clinic")
    await store.write_remote([edit], to_feed=True, claim_clients={(other.id, CLIENT): "laptop-2"})
    # The owner goes on in its record.
    await store.write_remote([forged], to_feed=True, claim_clients={(held.id, CLIENT): "laptop-1"})
    assert await store.client_owners(pairs) == {
        (held.id, CLIENT): "laptop-1",
        (other.id, CLIENT): "laptop-2",
    }
    assert await store.check() == []


async def test_a_version_20_sqlite_servers_bindings_hold_per_record(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    held, other = _patient_as(CLIENT), Patient("laptop-2")
    async with SQLiteStore.open(path) as store:
        await _write(store, held, other)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("DROP TABLE outbox_aside")  # version 22's
        conn.execute("DROP TABLE set_aside")
        conn.execute("DROP TABLE record_clients")
        conn.execute(
            "INSERT INTO yjs_clients (client, replica_id) VALUES (?, 'laptop-1')", (CLIENT,)
        )
        conn.execute("PRAGMA user_version = 20")
        conn.execute("COMMIT")
    finally:
        conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 20
        await _legacy_row_binds_only_where_the_record_holds_the_client(store, held, other)


async def test_a_version_7_postgresql_servers_bindings_hold_per_record(
    postgres_database: str,
) -> None:
    held, other = _patient_as(CLIENT), Patient("laptop-2")
    async with fresh_schema(postgres_database) as url:
        async with PostgresStore.open(url) as store:
            await _write(store, held, other)
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute("DROP TABLE record_clients")
            conn.execute(
                "INSERT INTO yjs_clients (client, replica_id) VALUES (%s, 'laptop-1')", (CLIENT,)
            )
            conn.execute("UPDATE caresync_schema SET version = 7")
        async with PostgresStore.open(url) as store:
            assert store.migrated_from == 7
            await _legacy_row_binds_only_where_the_record_holds_the_client(store, held, other)
