"""The PostgreSQL server store passes the exported conformance suite (its server part),
and what it promises of its own: URLs, opening, migrations, feed order across
connections. Needs PostgreSQL (see tests/postgres.py): skips without it, unless
CARESYNC_REQUIRE_POSTGRES=1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from caresync.storage.postgres import PostgresStore
from caresync.testing.store_data import FakeClock
from caresync.testing.store_suite import ServerStoreSuite
from tests.postgres import fresh_schema


class TestPostgresStore(ServerStoreSuite):
    """Every test of the replica and server parts, each in a schema of its own."""

    url: str

    @pytest.fixture(autouse=True)
    def _database(self, postgres_database: str) -> None:
        self.url = postgres_database

    def make_store(
        self, directory: Path, clock: FakeClock
    ) -> AbstractAsyncContextManager[PostgresStore]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[PostgresStore]:
            async with fresh_schema(self.url) as url, PostgresStore.open(url, clock=clock) as s:
                yield s

        return opened()
