"""A first copy's key rows set aside until its last batch (SQLite schema 17).

A batch whose pairs the server named appends its cards' key rows to
``person_keys_copied``; the copy's last batch (``CopiedRecords.last``) moves them into
``person_keys`` in its transaction, and any write that looks keys up or replaces a
card's keys moves them first. The index is the same as when each batch wrote its rows
into ``person_keys`` (the copy that finds its pairs itself still does): after a whole
copy, after one cut between batches and resumed, and after a local edit made between
batches; ``check()`` accepts a database holding rows set aside.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.storage.test_copy_pairs import (
    copied,
    copy_into,
    index,
    index_rows,
    key_rows,
    pages,
    serve,
    twice_registered,
)
from tests.storage.test_copy_persons import clinics

from caresync import Record
from caresync.records.persons import PairState, person_card
from caresync.storage import SCHEMA_VERSION, IncomingUpdate, MemoryStore, SQLiteStore
from caresync.storage.base import CopiedRecords, CopyPage
from caresync.storage.migrations import create_schema
from caresync.testing.store_data import oracle


def set_aside(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM person_keys_copied").fetchone()[0])
    finally:
        conn.close()


async def copy_pages(
    laptop: SQLiteStore, org: str, batches: list[CopyPage], *, last_of: int | None
) -> None:
    """These pages written as a laptop writes a copy's batches, with the server's
    pairs; the page numbered ``last_of`` (from 1) marked the copy's last."""
    for n, page in enumerate(batches, start=1):
        batch = copied(org, page, with_pairs=True)
        if n == last_of:
            batch = replace(batch, last=True)
        await laptop.write_copy(batch, checkpoint=("copy.resume", page.records[-1][0]))


async def test_rows_wait_aside_until_the_last_batch_then_are_the_index(tmp_path: Path) -> None:
    records = twice_registered()  # two pairs, each completed by the second batch
    async with SQLiteStore.open(tmp_path / "server.db") as server:
        await serve(server, records, 0)
        batches = await pages(server, "org-1", 2)
        assert len(batches) == 2
        async with SQLiteStore.open(tmp_path / "found.db") as found:
            await copy_into(found, server, 2, with_pairs=False, orgs=("org-1",))
        async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
            await copy_pages(laptop, "org-1", batches[:1], last_of=None)
            # Set aside, not in the index's table; check() reads both as one index.
            assert key_rows(tmp_path / "laptop.db") == []
            assert set_aside(tmp_path / "laptop.db") > 0
            assert await laptop.check() == []
            await copy_pages(laptop, "org-1", batches[1:], last_of=1)
            assert set_aside(tmp_path / "laptop.db") == 0
            assert len(await laptop.person_pairs()) == 2
            assert await laptop.check() == []
    assert key_rows(tmp_path / "laptop.db") == key_rows(tmp_path / "found.db")
    assert key_rows(tmp_path / "found.db", "person_keys_copied") == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics(), st.integers(1, 5), st.integers(0, 2**32), st.data())
def test_a_copy_cut_between_batches_and_resumed_ends_with_the_same_index(
    records: list[tuple[Record, str]], size: int, seed: int, data: st.DataObject
) -> None:
    """Cut after any batch (the store closed, as a crash between two commits leaves
    it), checked, reopened and resumed: the index of the copy that was not cut, and of
    the copy that writes its key rows batch by batch."""
    ids = sorted(record.record_id for record, _org in records)

    async def run(folder: Path) -> None:
        async with SQLiteStore.open(folder / "server.db") as server:
            await serve(server, records, seed)
            batches = await pages(server, "org-1", size)
            cut = data.draw(st.integers(0, len(batches)), label="cut")
            async with SQLiteStore.open(folder / "whole.db") as laptop:
                await copy_pages(laptop, "org-1", batches, last_of=len(batches))
                whole = await index(laptop, ids)
            async with SQLiteStore.open(folder / "found.db") as laptop:
                await copy_into(laptop, server, size, with_pairs=False, orgs=("org-1",))
                found = await index(laptop, ids)
            async with SQLiteStore.open(folder / "cut.db") as laptop:
                await copy_pages(laptop, "org-1", batches[:cut], last_of=None)
            async with SQLiteStore.open(folder / "cut.db") as laptop:
                assert await laptop.check() == []
                assert index_rows(folder / "cut.db") == sorted(
                    row for row in key_rows(folder / "found.db") if row[1] <= _last(batches, cut)
                )
                await copy_pages(laptop, "org-1", batches[cut:], last_of=len(batches) - cut)
                if cut == len(batches):
                    # Nothing was left to copy: the laptop ends the copy with an empty
                    # batch marked last (as its session does).
                    await laptop.write_copy(CopiedRecords([], [], [], "org-1", {}, {}, last=True))
                resumed = await index(laptop, ids)
        assert resumed == whole == found
        assert key_rows(folder / "cut.db") == key_rows(folder / "found.db")
        assert key_rows(folder / "whole.db") == key_rows(folder / "found.db")
        if batches:
            assert set_aside(folder / "cut.db") == 0
            assert set_aside(folder / "whole.db") == 0
        assert whole[2] == oracle(
            {
                record.record_id: (org, person_card(record))
                for record, org in records
                if org == "org-1"
            }
        )

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))


def _last(batches: list[CopyPage], cut: int) -> str:
    """The last record id of the first ``cut`` batches ("" for none)."""
    return batches[cut - 1].records[-1][0] if cut else ""


async def test_a_card_written_between_batches_is_paired_with_the_rows_set_aside(
    tmp_path: Path,
) -> None:
    """A copy cut after its first batch; a record registered here, the same person as
    one copied: its pair is found (the rows set aside were moved into the index before
    the look-up), and the copy resumed ends with the index the memory store makes."""
    records = [
        (_registered(record_id, name, birth), "org-1")
        for record_id, name, birth in (
            ("a-1", "Awa Ndiaye", "1990-04-12"),
            ("b-1", "Moussa Diallo", "1985-07-01"),
            ("c-2", "Awa Ndiaye", "1990-04-12"),  # a-1 again, in the second batch
            ("d-2", "Moussa Diallo", "1985-07-01"),
        )
    ]
    again = _registered("e-here", "Awa Ndiaye", "1990-04-12")
    first = records[0][0]
    async with SQLiteStore.open(tmp_path / "server.db") as server:
        await serve(server, records, 0)
        batches = await pages(server, "org-1", 2)
        assert [[rid for rid, _ in page.records] for page in batches] == [
            ["a-1", "b-1"],
            ["c-2", "d-2"],
        ]
        async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
            await copy_pages(laptop, "org-1", batches[:1], last_of=None)
            assert set_aside(tmp_path / "laptop.db") > 0
            local = IncomingUpdate(
                again.record_id, again.update_since(), None, "org-1", person_card(again)
            )
            await laptop.write_local_many([local])
            assert set_aside(tmp_path / "laptop.db") == 0
            mine = await laptop.person_pairs(again.record_id)
            assert [p.other(again.record_id).record_id for p in mine] == [first.record_id]
            assert mine[0].state is PairState.POSSIBLE
            assert await laptop.check() == []
            await copy_pages(laptop, "org-1", batches[1:], last_of=1)
            assert set_aside(tmp_path / "laptop.db") == 0
            assert await laptop.check() == []
            pairs = await laptop.person_pairs()
    memory = await MemoryStore.open()
    await memory.write_remote(
        [
            IncomingUpdate(r.record_id, r.update_since(), None, org, person_card(r))
            for r, org in [*records, (again, "org-1")]
        ]
    )
    assert pairs == await memory.person_pairs()
    # The server's two, and Awa's record registered here with each of her two.
    assert [p.record_ids for p in pairs] == [
        ("a-1", "c-2"),
        ("a-1", "e-here"),
        ("b-1", "d-2"),
        ("c-2", "e-here"),
    ]


def _registered(record_id: str, name: str, birth: str) -> Record:
    record = Record.create(replica="desk-a", record_id=record_id)
    with record.batch():
        record.set("name", name, author="dr.a")
        record.set("birthDate", birth, author="dr.a")
    return record


async def test_a_version_16_database_gains_the_table_and_copies(tmp_path: Path) -> None:
    path = tmp_path / "v16.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=16)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "person_keys_copied" not in tables
    conn.close()
    records = twice_registered()
    async with SQLiteStore.open(tmp_path / "server.db") as server:
        await serve(server, records, 0)
        batches = await pages(server, "org-1", 2)
        async with SQLiteStore.open(path) as laptop:
            assert laptop.migrated_from == 16
            await copy_pages(laptop, "org-1", batches, last_of=len(batches))
            assert len(await laptop.person_pairs()) == 2
            assert await laptop.check() == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT COUNT(*) FROM person_keys_copied").fetchone() == (0,)
    conn.close()


async def test_check_names_rows_set_aside_for_no_card(tmp_path: Path) -> None:
    records = twice_registered()
    async with SQLiteStore.open(tmp_path / "server.db") as server:
        await serve(server, records, 0)
        batches = await pages(server, "org-1", 2)
        async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
            await copy_pages(laptop, "org-1", batches[:1], last_of=None)
    conn = sqlite3.connect(tmp_path / "laptop.db", isolation_level=None)
    conn.execute("INSERT INTO person_keys_copied (hash, rk) VALUES (7, 999999)")
    conn.close()
    async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
        assert await laptop.check() == [
            "1 person keys set aside by a first copy belong to no stored card"
        ]
