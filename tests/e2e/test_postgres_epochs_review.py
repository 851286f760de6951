"""No false alarm from feed epochs on a PostgreSQL database that several server
processes serve, start and stop at any time (needs PostgreSQL, tests/postgres.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.postgres import fresh_schema

from caresync.replica import Replica
from caresync.server import SyncServer

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def schema_url(postgres_database: str) -> AsyncIterator[str]:
    async with fresh_schema(postgres_database) as url:
        yield url


async def _serving(url: str) -> SyncServer:
    server = await SyncServer.open(url)
    await server.serve("127.0.0.1", 0)
    return server


async def test_servers_starting_beside_each_other_raise_no_false_alarm(
    tmp_path: Path, schema_url: str
) -> None:
    first = await _serving(schema_url)
    await first.add_user("clinic-a", "dr.a", PASSWORD)
    await first.add_user("clinic-a", "dr.b", PASSWORD)
    a = await Replica.open(tmp_path / "a.db")
    b = await Replica.open(tmp_path / "b.db")
    servers = [first]
    try:
        await a.enrol(first.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        await b.enrol(first.url, username="dr.b", password=PASSWORD, organisation="clinic-a")
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await b.sync()
        for step in range(6):
            await a.set(chart, "weightKg", step, author="dr.a")
            # A server starts beside the others (a new epoch past the head), and the
            # laptops sync through the newest and the oldest alternately.
            servers.append(await _serving(schema_url))
            via = servers[-1] if step % 2 else servers[0]
            report = await a.sync(url=via.url)
            assert report.server_went_back is False
            await b.set(chart, f"note{step}", "seen", author="dr.b")
            other = servers[0] if step % 2 else servers[-1]
            assert (await b.sync(url=other.url)).server_went_back is False
            assert (await a.sync(url=other.url)).server_went_back is False
            if step == 3:  # the oldest stops and starts again
                await servers[0].close()
                servers[0] = await _serving(schema_url)
        for replica in (a, b):
            record = await replica.record(chart, audited=False)
            assert record.value("weightKg") == 5
            assert record.value("note5") == "seen"
    finally:
        for replica in (a, b):
            await replica.close()
        for server in servers:
            await server.close()
