"""A PostgreSQL server restored from an older copy of its tables: the laptops that read
further put it right, as with SQLite (tests/e2e/test_server_restored.py).

Needs PostgreSQL (tests/postgres.py). The backup is every row of the server's schema,
copied into tables beside it while the server is stopped; the restore puts those rows
back (what ``pg_restore --clean`` does to the rows), the server stopped, and starts it
again on the same address. The server's store is shared by processes, so its feed
epochs are read back from the database as the feed moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from tests.e2e.live_helpers import LIMIT_S, live, until, watch
from tests.postgres import fresh_schema

from caresync.recovery import recover_entries
from caresync.replica import Replica, ReplicaState
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


async def test_a_lost_laptops_entries_come_back_beside_a_running_postgres_server(
    tmp_path: Path, schema_url: str, postgres_database: str
) -> None:
    """The operator's recovery runs in a process of its own beside the serving one (a
    PostgreSQL store is shared): a laptop live on the serving one receives what it
    admits, relayed as any other process's commit."""
    schema = schema_url.rsplit("%3D", 1)[1]
    backup = f"{schema}_backup"
    server = await SyncServer.open(schema_url)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.serve("127.0.0.1", 0)
    port = int(server.url.rsplit(":", 1)[1])
    lost = await _enrolled(tmp_path, server, "lost", "dr.a")
    colleague = await _enrolled(tmp_path, server, "colleague", "dr.b")
    watcher: Replica | None = None
    try:
        chart = await colleague.create_record()
        await colleague.set(chart, "name", "Awa Diop", author="dr.b")
        await colleague.sync()
        await lost.sync()
        await server.close()
        _back_up(postgres_database, schema, backup)
        server = await SyncServer.open(schema_url)
        await server.serve("127.0.0.1", port)
        await lost.set(chart, "birthDate", "1990-04-12", author="dr.a")
        await lost.sync()
        await lost.close()  # the laptop is gone
        await colleague.sync()

        await server.close()
        _restore(postgres_database, schema, backup)
        server = await SyncServer.open(schema_url)
        await server.serve("127.0.0.1", port)
        assert (await colleague.sync()).server_went_back
        watcher = await _enrolled(tmp_path, server, "watcher", "dr.b")
        signal = watch(watcher, server=server)
        async with live(watcher) as run, asyncio.timeout(LIMIT_S):
            await run.states.reach(ReplicaState.ONLINE)
            assert (await watcher.record(chart, audited=False)).value("birthDate") is None
            operator = await SyncServer.open(schema_url)
            try:
                report = await recover_entries(operator, colleague.store, vouched_by="os:admin")
            finally:
                await operator.close()
            assert report.records_changed == 1

            async def arrived() -> bool:
                record = await watcher.record(chart, audited=False)
                return record.value("birthDate") == "1990-04-12"

            await until(arrived, signal)
    finally:
        for replica in (lost, colleague, watcher):
            if replica is not None:
                await replica.close()
        await server.close()
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(backup)))
