"""A server process re-indexing a PostgreSQL database (a new rulebook) while another
serves it: a push committed by the serving process while the re-index holds a chunk
between its read and its write keeps its conflict rows and person card.

Before the fix, the re-index read the chunk, the push committed (its rows: the
allergy conflict its prescription makes), and the re-index then wrote rows and a
card computed from the record as it was before the push over the push's: the index
listed no conflict on a record that holds one, and sent that to laptops as the
server's check. Needs PostgreSQL (tests/postgres.py); real websockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.e2e.live_helpers import PASSWORD
from tests.postgres import fresh_schema

import caresync.server
from caresync import DEFAULT_RULEBOOK, Record
from caresync.records.persons import person_card
from caresync.replica import Replica
from caresync.replication.index import INDEX_RULEBOOK_KEY
from caresync.replication.pool import conflict_rows
from caresync.server import SyncServer
from caresync.storage import ServerStore
from caresync.storage.postgres.schema import PUSH_LOCK

LIMIT_S = 30.0
ALLERGY = "allergy-vs-prescription"


@pytest.fixture
async def clinic_url(postgres_database: str) -> AsyncIterator[str]:
    """A schema of this test's own, with an account in clinic-a."""
    async with fresh_schema(postgres_database) as url:
        async with await SyncServer.open(url) as first:
            await first.add_user("clinic-a", "dr.a", PASSWORD)
        yield url


async def push_lock_is_free(url: str) -> bool:
    """Whether no session holds the push lock now (taken and given back at once if so)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (PUSH_LOCK,))
        row = await cur.fetchone()
        assert row is not None
        if row[0]:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (PUSH_LOCK,))
        return bool(row[0])


async def index_agrees(store: ServerStore, record_id: str, replica: str) -> None:
    """The stored rows and card are those of the record as stored."""
    stored = await store.load(record_id)
    assert stored is not None
    record = Record.from_update(record_id, stored, replica=replica)
    rows = (await store.conflict_rows([record_id])).get(record_id, ())
    assert list(rows) == sorted(conflict_rows(record, DEFAULT_RULEBOOK), key=lambda r: r.id)
    assert (await store.person_cards([record_id])).get(record_id) == person_card(record)


async def test_a_push_during_another_process_reindex_keeps_its_rows_and_card(
    tmp_path: Path, clinic_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving = await SyncServer.open(clinic_url)
    await serving.serve("127.0.0.1", 0)
    laptop = await Replica.open(tmp_path / "laptop.db")
    starting: SyncServer | None = None
    try:
        await laptop.enrol(serving.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        record_id = await laptop.create_record()
        await laptop.set(record_id, "name", "Awa Diallo")
        await laptop.add_entry(record_id, "allergies", {"substance": "Penicillin"})
        await laptop.sync()
        # A release with another rulebook: the next process to start re-indexes.
        await serving.store.set_meta(INDEX_RULEBOOK_KEY, "the previous release's rulebook")

        # The starting process's store holds its re-index between reading a chunk
        # (and computing its rows) and writing them.
        read, release = asyncio.Event(), asyncio.Event()
        opening = caresync.server.open_server_database

        async def held_open(path: Any, **options: Any) -> Any:
            store = await opening(path, **options)
            write = store.set_conflicts_many

            async def held_write(*args: Any, **kwargs: Any) -> None:
                read.set()
                await release.wait()
                await write(*args, **kwargs)

            store.set_conflicts_many = held_write  # type: ignore[method-assign]
            return store

        monkeypatch.setattr(caresync.server, "open_server_database", held_open)
        opened = asyncio.create_task(SyncServer.open(clinic_url))
        async with asyncio.timeout(LIMIT_S):
            await read.wait()

        # Meanwhile the chart gains a prescription the allergy rules out, and the name
        # changes: both pushed through the serving process.
        await laptop.add_entry(record_id, "medications", {"drug": "Augmentin 625 mg"})
        await laptop.set(record_id, "name", "Awa Diallo Sow")
        # The push goes in now if the re-index lets it (as it did before the fix: the
        # re-index then wrote over it); otherwise it waits its turn.
        lock_held = not await push_lock_is_free(clinic_url)
        pushed = asyncio.create_task(laptop.sync())
        async with asyncio.timeout(LIMIT_S):
            if not lock_held:
                assert (await pushed).uploaded >= 1
            release.set()
            starting = await opened
            if lock_held:
                assert (await pushed).uploaded >= 1

        for store in (serving.store, starting.store):
            await index_agrees(store, record_id, serving.server_id)
        rows = (await serving.store.conflict_rows([record_id]))[record_id]
        assert [json.loads(row.payload)["rule"] for row in rows] == [ALLERGY]
        assert await serving.store.get_meta(INDEX_RULEBOOK_KEY) == DEFAULT_RULEBOOK.fingerprint
        assert lock_held, "the re-index holds the push lock from its read to its write"
    finally:
        await laptop.close()
        if starting is not None:
            await starting.close()
        await serving.close()
