"""``ensure_index``: a re-index replaces rows a chunk of records per transaction, mark last;
on a shared store, each chunk read and written in one exclusive section.

Both stores; for SQLite, the statements its connection runs (SQLite's own
trace) count the transactions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.sqlite_trace import traced, write_transactions

from caresync import DEFAULT_RULEBOOK, Record
from caresync.conflicts import Conflict, Rulebook
from caresync.replication.index import INDEX_RULEBOOK_KEY, ensure_index
from caresync.replication.pool import conflict_rows
from caresync.storage import IncomingUpdate, MemoryStore, SQLiteStore, Store

RECORDS = 11
CHUNK = 4  # so 3 chunks: 4, 4, 3


class Interrupted(Exception):
    """Stands for the process dying part-way through a re-index."""


class FailingRulebook(Rulebook):
    """The built-in rules, raising after ``limit`` records (a re-index cut short)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.runs = 0

    def conflicts(self, record: Record) -> list[Conflict]:
        self.runs += 1
        if self.runs > self.limit:
            raise Interrupted
        return super().conflicts(record)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        async with MemoryStore.open() as memory:
            yield memory
    else:
        async with SQLiteStore.open(tmp_path / "replica.db") as sqlite:
            yield sqlite


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("caresync.replication.index.REINDEX_BATCH_RECORDS", CHUNK)


async def seed(store: Store) -> dict[str, tuple[str, ...]]:
    """RECORDS records, each with two birth dates, stored with no rows (a stale index).

    Returns each record's rows as the built-in rules compute them.
    """
    items, expected = [], {}
    for _ in range(RECORDS):
        a = Record.create(replica="desk-a")
        b = Record.from_update(a.record_id, a.update_since(), replica="desk-b")
        a.set("birthDate", "1980-01-01", author="dr.a")
        b.set("birthDate", "1981-01-01", author="dr.b")
        a.apply_update(b.update_since())
        rows = conflict_rows(a, DEFAULT_RULEBOOK)
        assert rows
        expected[a.record_id] = tuple(sorted(row.id for row in rows))
        items.append(IncomingUpdate(a.record_id, a.update_since(), ()))
    await store.write_remote(items)
    return expected


async def indexed(store: Store) -> dict[str, tuple[str, ...]]:
    rows = await store.conflict_rows(await store.record_ids())
    return {record_id: tuple(row.id for row in got) for record_id, got in rows.items()}


async def test_every_record_is_reindexed_and_the_mark_written(store: Store) -> None:
    expected = await seed(store)
    assert await indexed(store) == {}
    assert await ensure_index(store, DEFAULT_RULEBOOK, replica="laptop") == RECORDS
    assert await indexed(store) == expected
    assert await store.get_meta(INDEX_RULEBOOK_KEY) == DEFAULT_RULEBOOK.fingerprint
    assert await ensure_index(store, DEFAULT_RULEBOOK, replica="laptop") == 0
    assert await store.check() == []


async def test_an_interrupted_reindex_keeps_whole_chunks_and_starts_again(store: Store) -> None:
    expected = await seed(store)
    cut = FailingRulebook(limit=CHUNK + 1)  # dies inside the second chunk
    with pytest.raises(Interrupted):
        await ensure_index(store, cut, replica="laptop")
    ids = await store.record_ids()
    # The first chunk committed whole; nothing of the second did; no mark.
    assert await indexed(store) == {i: expected[i] for i in ids[:CHUNK]}
    assert await store.get_meta(INDEX_RULEBOOK_KEY) is None
    assert await ensure_index(store, DEFAULT_RULEBOOK, replica="laptop") == RECORDS
    assert await indexed(store) == expected


async def test_sqlite_reindexes_one_transaction_per_chunk(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "replica.db") as store:
        await seed(store)
        async with traced(store) as statements:
            await ensure_index(store, DEFAULT_RULEBOOK, replica="laptop")
    transactions = write_transactions(statements)
    chunks = -(-RECORDS // CHUNK)
    assert len(transactions) == chunks + 1  # one per chunk, then the mark
    for inside in transactions[:chunks]:
        assert any("INTO conflicts " in s for s in inside)


async def test_with_exclusive_each_chunk_is_read_and_written_inside_one_section(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk's read and write happen in one section (no commit lands between)."""
    expected = await seed(store)
    sections: list[list[str]] = []
    inside: list[str] | None = None

    @asynccontextmanager
    async def exclusive() -> AsyncIterator[None]:
        nonlocal inside
        async with store.exclusive_commits():
            inside = []
            try:
                yield
            finally:
                sections.append(inside)
                inside = None

    def noted(name: str) -> Callable[..., Awaitable[object]]:
        method = getattr(store, name)

        async def call(*args: Any, **kwargs: Any) -> object:
            assert inside is not None, f"{name} outside the exclusive section"
            inside.append(name)
            return await method(*args, **kwargs)

        return call

    for name in ("load_many", "set_conflicts_many"):
        monkeypatch.setattr(store, name, noted(name))
    assert await ensure_index(store, DEFAULT_RULEBOOK, replica="server", exclusive=exclusive) == (
        RECORDS
    )
    assert sections == [["load_many", "set_conflicts_many"]] * -(-RECORDS // CHUNK)
    assert await indexed(store) == expected
    assert await store.get_meta(INDEX_RULEBOOK_KEY) == DEFAULT_RULEBOOK.fingerprint


async def test_a_reindex_stops_once_another_process_finished_it(store: Store) -> None:
    """Another process on the database wrote the mark meanwhile: its index stands."""
    expected = await seed(store)
    sections = 0

    @asynccontextmanager
    async def exclusive() -> AsyncIterator[None]:
        nonlocal sections
        sections += 1
        if sections == 2:  # the other process ended its run while this one did a chunk
            await store.set_meta(INDEX_RULEBOOK_KEY, DEFAULT_RULEBOOK.fingerprint)
        async with store.exclusive_commits():
            yield

    assert await ensure_index(store, DEFAULT_RULEBOOK, replica="server", exclusive=exclusive) == (
        CHUNK
    )
    ids = await store.record_ids()
    assert await indexed(store) == {i: expected[i] for i in ids[:CHUNK]}
    assert sections == 2
