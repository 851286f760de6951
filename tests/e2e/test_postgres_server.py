"""End to end on PostgreSQL: a real SyncServer on a PostgreSQL store, served on 127.0.0.1
websockets, and two laptops on SQLite files. Needs PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.postgres import fresh_schema

from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage.postgres import PostgresStore

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def served(postgres_database: str) -> AsyncIterator[tuple[SyncServer, str]]:
    """A server on a schema of this test's own, and that schema's URL."""
    async with fresh_schema(postgres_database) as url:
        opened = await SyncServer.open(url)
        try:
            assert isinstance(opened.store, PostgresStore)
            await opened.add_user("clinic-a", "dr.a", PASSWORD)
            await opened.add_user("clinic-a", "dr.b", PASSWORD)
            await opened.serve("127.0.0.1", 0)
            yield opened, url
        finally:
            await opened.close()


async def enrolled(tmp_path: Path, server: SyncServer, name: str, user: str) -> Replica:
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic-a")
    return laptop


async def test_two_laptops_see_one_conflict_through_a_postgres_server_and_converge(
    tmp_path: Path, served: tuple[SyncServer, str]
) -> None:
    server, _url = served
    a = await enrolled(tmp_path, server, "laptop-a", "dr.a")
    b = await enrolled(tmp_path, server, "laptop-b", "dr.b")
    record_id = await a.create_record()
    await a.set(record_id, "birthDate", "1990-01-01", author="dr.a")
    await a.sync()
    assert (await b.sync()).downloaded >= 1
    assert (await b.record(record_id)).value("birthDate") == "1990-01-01"

    # Both offline: the same field changed on each.
    await a.set(record_id, "birthDate", "1990-01-02", author="dr.a")
    await b.set(record_id, "birthDate", "1991-01-01", author="dr.b")
    await a.sync()
    await b.sync()
    await a.sync()

    conflicts_a, conflicts_b = await a.conflicts(), await b.conflicts()
    assert len(conflicts_a) == 1
    assert conflicts_a == conflicts_b
    assert {c.value for c in conflicts_a[0].candidates} == {"1990-01-02", "1991-01-01"}
    assert [row.id for row in await server.store.conflicts()] == [conflicts_a[0].id]

    await b.resolve(conflicts_b[0].id, choose=0, author="dr.b")
    await b.sync()
    await a.sync()
    assert await a.conflicts() == [] == await b.conflicts()
    assert await server.store.count_conflicts() == 0
    value = (await a.record(record_id)).value("birthDate")
    assert value == (await b.record(record_id)).value("birthDate")
    assert (await a.status()).pending == 0
    assert await server.store.check() == []
    for replica in (a, b):
        await replica.close()


async def test_a_second_server_on_the_same_database_is_the_same_server(
    tmp_path: Path, served: tuple[SyncServer, str]
) -> None:
    server, url = served
    laptop = await enrolled(tmp_path, server, "laptop-a", "dr.a")
    record_id = await laptop.create_record()
    await laptop.sync()
    second = await SyncServer.open(url)
    try:
        assert second.server_id == server.server_id
        fingerprint = await second.server_key_fingerprint()
        assert fingerprint == await server.server_key_fingerprint()
        assert await second.store.has_record(record_id)
        assert [r.replica_id for r in await second.store.replicas()] == [laptop.identity.replica_id]
    finally:
        await second.close()
    await laptop.close()
