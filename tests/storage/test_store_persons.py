"""The person index (issue 13, item 3) in the SQLite store: kept across reopening and
migrations, damage named, and written in one transaction of indexed lookups.

What every store does with it (pairs made, refused, rebuilt, in any order and batches
of cards) is in the conformance suite, :mod:`caresync.testing.store_suite`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.sqlite_trace import traced, write_transactions

from caresync import (
    CorruptDatabaseError,
)
from caresync.records.persons import (
    PairState,
    pair_of,
)
from caresync.storage import IncomingUpdate, SQLiteStore
from caresync.storage.migrations import create_schema
from caresync.testing.store_data import card, incoming, oracle, registered, whole


async def test_the_index_survives_reopening(tmp_path: Path) -> None:
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        await store.write_remote([incoming(a, "org-1"), incoming(b, "org-1")])
        pairs = await store.person_pairs()
    async with SQLiteStore.open(path) as again:
        assert await again.person_pairs() == pairs
        assert await again.person_cards([a.id, b.id]) == {a.id: card(a), b.id: card(b)}
        assert await again.check() == []
        c = registered("Awa Diop", replica="laptop-c")
        await again.write_local(
            c.id, whole(c), conflicts=None, organisation="org-1", person=card(c)
        )
        assert len(await again.person_pairs(c.id)) == 2


async def test_a_version_7_database_migrates_with_an_empty_index(tmp_path: Path) -> None:
    path = tmp_path / "v7.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=7)
    conn.close()
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    async with SQLiteStore.open(path) as old:  # written at version 8 below; first the records
        assert old.migrated_from == 7
        await old.write_remote([incoming(a, "org-1", person=False)])
        assert await old.person_pairs() == []
        await old.write_remote([incoming(b, "org-1")])
        await old.set_conflicts_many({}, persons={a.id: card(a)})
        assert len(await old.person_pairs()) == 1
        assert await old.check() == []
    async with SQLiteStore.open(path) as again:
        assert again.migrated_from is None


async def test_a_version_7_database_with_records_migrates(tmp_path: Path) -> None:
    """Records stored by version 7 are still there; their index is empty until re-indexed."""
    path = tmp_path / "v7.db"
    a = registered("Awa Diop")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=7)
    update = whole(a)
    conn.execute(
        "INSERT INTO records (record_id, organisation, state_vector, log_count, log_bytes,"
        " created_ms, updated_ms, rk) VALUES (?, 'org-1', ?, 1, ?, 1, 1, 1)",
        (a.id, a.record.state_vector(), len(update)),
    )
    conn.execute("INSERT INTO log (rk, data, created_ms) VALUES (1, ?, 1)", (update,))
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 7
        assert await store.check() == []
        assert await store.person_cards([a.id]) == {}
        await store.set_conflicts_many({}, persons={a.id: card(a)})
        b = registered("Awa Diop", replica="laptop-b")
        await store.write_remote([incoming(b, "org-1")])
        [pair] = await store.person_pairs(a.id)
        assert pair.record_ids == tuple(sorted((a.id, b.id)))


def _damage(path: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute(sql, args).rowcount == 1
    finally:
        conn.close()


@pytest.mark.parametrize(
    "damaged", [b"not json", b'{"v": 99, "id": "x"}', b'{"v": 1, "id": "someone else"}']
)
async def test_a_damaged_stored_card_is_a_corrupt_database_naming_the_record(
    tmp_path: Path, damaged: bytes
) -> None:
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        await store.write_remote([incoming(a, "org-1")])
    _damage(path, "UPDATE person_cards SET card = ? WHERE record_id = ?", damaged, a.id)
    async with SQLiteStore.open(path) as store:
        with pytest.raises(CorruptDatabaseError, match=a.id):
            await store.person_cards([a.id, b.id])
        # A card compared with it cannot be paired: the write is refused whole.
        with pytest.raises(CorruptDatabaseError, match=a.id):
            await store.write_remote([incoming(b, "org-1")])
        assert not await store.has_record(b.id)
        assert any(a.id in problem for problem in await store.check())
        # Re-indexing the record repairs it.
        await store.set_conflicts_many({}, persons={a.id: card(a)})
        await store.write_remote([incoming(b, "org-1")])
        assert len(await store.person_pairs()) == 1
        assert await store.check() == []


async def test_a_damaged_stored_pair_is_a_corrupt_database_naming_its_records(
    tmp_path: Path,
) -> None:
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        await store.write_remote([incoming(a, "org-1"), incoming(b, "org-1")])
    _damage(path, "UPDATE person_pairs SET payload = x'00'")
    async with SQLiteStore.open(path) as store:
        with pytest.raises(CorruptDatabaseError, match=a.id):
            await store.person_pairs(b.id)
        with pytest.raises(CorruptDatabaseError, match=b.id):
            await store.person_pairs(state=PairState.POSSIBLE)
        assert await store.check() != []
        # A write that leaves the card as stored leaves its pairs alone (damaged or not)...
        await store.write_remote(
            [IncomingUpdate(b.id, b.edit("heightCm", 170), None, person=card(b))]
        )
        with pytest.raises(CorruptDatabaseError, match=b.id):
            await store.person_pairs(b.id)
        # ...re-indexing the record repairs them, as the error says.
        await store.set_conflicts_many({}, persons={b.id: card(b)})
        assert await store.person_pairs() == [pair_of(card(a), card(b))]
        assert await store.check() == []


async def test_a_write_with_a_card_is_one_transaction_of_indexed_lookups(tmp_path: Path) -> None:
    patients = [registered("Awa Diop", replica=f"laptop-{n}") for n in range(30)]
    async with SQLiteStore.open(tmp_path / "replica.db", cache_entries=0) as store:
        await store.write_remote([incoming(p, "org-1") for p in patients[:20]])
        async with traced(store) as statements:
            await store.write_remote([incoming(p, "org-1") for p in patients[20:]])
            p = patients[0]
            # An identifying field: the card changes (an unchanged one is not rewritten).
            update = p.edit("name", "Awa Diop Ndiaye")
            await store.write_local(p.id, update, conflicts=None, person=card(p))
            await store.person_pairs(p.id)
            await store.person_pairs(state=PairState.POSSIBLE)
            await store.person_pairs(organisation="org-1", state=PairState.POSSIBLE)
            await store.person_cards([p.id])
        [batch, local] = write_transactions(statements)
        assert any("person_pairs" in s for s in batch)  # with their records, in one commit
        assert any("INSERT INTO log" in s for s in local)
        assert any("person_keys" in s for s in local)
        person_statements = [s for s in statements if "person_" in s]

        def plan(raw: sqlite3.Connection) -> list[str]:
            return [
                str(row[-1])
                for s in person_statements
                for row in raw.execute(f"EXPLAIN QUERY PLAN {s}", ("",) * s.count("?"))
            ]

        details = await store._run("plan", plan)
        assert len(await store.person_pairs()) == 30 * 29 // 2
    assert [d for d in details if d.startswith("SCAN")] == []
    assert [d for d in details if "TEMP B-TREE" in d] == []


async def test_a_write_leaving_the_card_as_stored_rewrites_no_keys_and_no_pairs(
    tmp_path: Path,
) -> None:
    """Most edits touch no identifying field: such a record's keys and pairs stand as
    stored, and a changed partner in the same batch is still re-paired with it."""
    a, b, c = (registered("Awa Diop", replica=f"laptop-{n}") for n in "abc")
    async with SQLiteStore.open(tmp_path / "replica.db") as store:
        await store.write_remote([incoming(p, "org-1") for p in (a, b, c)])
        before = await store.person_pairs()
        assert len(before) == 3
        async with traced(store) as statements:
            await store.write_remote(
                [IncomingUpdate(a.id, a.edit("heightCm", 170), None, "org-1", card(a))]
            )
        written = [s for s in statements if "person_" in s and not s.startswith("SELECT")]
        assert written == []
        assert [s for s in statements if "person_keys" in s] == []
        assert await store.person_pairs() == before
        # b now another person by birth date, in one batch with a (unchanged): b's pairs
        # go, a's pair with c stays, and the index is as a fresh one would be.
        await store.write_remote(
            [
                IncomingUpdate(a.id, a.edit("heightCm", 171), None, "org-1", card(a)),
                IncomingUpdate(b.id, b.edit("birthDate", "1951-01-01"), None, "org-1", card(b)),
            ]
        )
        assert await store.person_pairs() == oracle({p.id: ("org-1", card(p)) for p in (a, b, c)})
        assert len(await store.person_pairs()) == 1
        assert await store.check() == []


# ------------------------------------------------------------------ imports
