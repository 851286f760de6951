"""A PostgreSQL server restored from an older copy of its tables: the laptops that read
further put it right, as with SQLite (tests/e2e/test_server_restored.py).

Needs PostgreSQL (tests/postgres.py). The backup is every row of the server's schema,
copied into tables beside it while the server is stopped; the restore puts those rows
back (what ``pg_restore --clean`` does to the rows), the server stopped, and starts it
again on the same address. The server's store is shared by processes, so its feed
epochs are read back from the database as the feed moves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from tests.postgres import fresh_schema

from caresync.replica import Replica
from caresync.server import SyncServer

PASSWORD = "correct horse battery staple"


def _tables(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = %s AND table_type = 'BASE TABLE' ORDER BY table_name",
        (schema,),
    )
    return [str(row[0]) for row in rows]


def _back_up(url: str, schema: str, backup: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(backup)))
        for table in _tables(conn, schema):
            conn.execute(
                sql.SQL("CREATE TABLE {} AS TABLE {}").format(
                    sql.Identifier(backup, table), sql.Identifier(schema, table)
                )
            )


def _restore(url: str, schema: str, backup: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        # As pg_restore does: the rows go back without the tables' triggers (the audit
        # trail's refuses any change but an append).
        conn.execute("SET LOCAL session_replication_role = replica")
        for table in _tables(conn, schema):
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, table)))
            conn.execute(
                sql.SQL("INSERT INTO {} OVERRIDING SYSTEM VALUE SELECT * FROM {}").format(
                    sql.Identifier(schema, table), sql.Identifier(backup, table)
                )
            )


@pytest.fixture
async def schema_url(postgres_database: str) -> AsyncIterator[str]:
    async with fresh_schema(postgres_database) as url:
        yield url


async def _enrolled(tmp_path: Path, server: SyncServer, name: str, user: str) -> Replica:
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic-a")
    return laptop


async def test_a_restored_postgres_server_gets_back_what_it_acknowledged(
    tmp_path: Path, schema_url: str, postgres_database: str
) -> None:
    schema = schema_url.rsplit("%3D", 1)[1]
    backup = f"{schema}_backup"
    server = await SyncServer.open(schema_url)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.serve("127.0.0.1", 0)
    port = int(server.url.rsplit(":", 1)[1])
    a = await _enrolled(tmp_path, server, "a", "dr.a")
    b = await _enrolled(tmp_path, server, "b", "dr.b")
    try:
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await b.sync()
        await server.close()
        _back_up(postgres_database, schema, backup)
        server = await SyncServer.open(schema_url)
        await server.serve("127.0.0.1", port)

        await a.set(chart, "birthDate", "1990-04-12", author="dr.a")  # lost by the restore
        await a.sync()
        await b.sync()  # b reads past the backup

        await server.close()
        _restore(postgres_database, schema, backup)
        server = await SyncServer.open(schema_url)
        await server.serve("127.0.0.1", port)
        for kg in (68, 69, 70):  # b's new entries take the numbers a has read past
            await b.set(chart, "weightKg", kg, author="dr.b")
        assert (await b.sync()).server_went_back
        assert (await a.sync()).server_went_back
        await b.sync()
        for replica in (a, b):
            record = await replica.record(chart, audited=False)
            assert record.value("birthDate") == "1990-04-12"
            assert record.value("weightKg") == 70
            assert len(record.history("weightKg")) == 3
            assert (await replica.status()).pending == 0
        assert await server.store.check() == []
    finally:
        for replica in (a, b):
            await replica.close()
        await server.close()
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(backup)))
