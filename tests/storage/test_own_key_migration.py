"""A card's key of its own record id (``r:<id>``) is no longer a key row (SQLite schema
16): the record an ``r:`` key names is found by its id. A first copy writes a quarter
fewer key rows; a link decision still brings its two records together; a database of
version 15 loses those rows when it opens, and one that kept some is still sound."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from store_helpers import undo_version_18, undo_version_19, undo_version_20

from caresync.records.persons import SAME_PERSON, PairState, PersonPair, link_path
from caresync.storage import SCHEMA_VERSION, MemoryStore, SQLiteStore, Store
from caresync.storage.sqlite.persons import _key_hash
from caresync.testing.store_data import Patient, incoming, registered


def _key_rows(path: Path) -> set[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return set(
            conn.execute(
                "SELECT k.hash, r.record_id FROM person_keys k JOIN records r ON r.rk = k.rk"
            )
        )
    finally:
        conn.close()


def _own_rows(path: Path, ids: list[str], org: str) -> set[tuple[int, str]]:
    return {(_key_hash(org, f"r:{rid}"), rid) for rid in ids}


def _put_own_rows(path: Path, ids: list[str], org: str, *, version: int | None) -> None:
    """What a database of before version 16 holds: each card's own key as a row."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO person_keys (hash, rk) SELECT ?, rk FROM records WHERE record_id = ?",
            sorted(_own_rows(path, ids, org)),
        )
        if version is not None:
            # Nor had a database of then the tables of versions 17 and 18.
            undo_version_20(conn)
            undo_version_19(conn)
            undo_version_18(conn)
            conn.execute("DROP TABLE person_keys_copied")
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    finally:
        conn.close()


def _unalike_pair() -> tuple[Patient, Patient]:
    """Two records nothing identifying joins, the second deciding they are one person."""
    a = registered("Awa Diop", "1990-04-12")
    b = registered("Moussa Sarr", "1971-01-30", sex="male", replica="laptop-b")
    b.edit(link_path(a.id), SAME_PERSON)
    return a, b


async def _written_later(store: Store, a: Patient, b: Patient) -> list[PersonPair]:
    await store.write_remote([incoming(a, "org-1")])
    await store.write_remote([incoming(b, "org-1")])
    return list(await store.person_pairs())


async def test_no_own_key_is_stored_and_a_decision_still_joins_its_records(
    tmp_path: Path,
) -> None:
    a, b = _unalike_pair()
    async with SQLiteStore.open(tmp_path / "l.db") as store:
        pairs = await _written_later(store, a, b)
        assert await store.check() == []
    rows = _key_rows(tmp_path / "l.db")
    assert rows
    assert not rows & _own_rows(tmp_path / "l.db", [a.id, b.id], "org-1")
    # b's link key names a, whose card is found by its id: the decided pair is kept
    # (as the memory store keeps it), though the two cards share no other key.
    assert [(p.record_ids, p.state) for p in pairs] == [
        (tuple(sorted([a.id, b.id])), PairState.LINKED)
    ]
    memory = await MemoryStore.open()
    assert pairs == await _written_later(memory, a, b)
    assert len(pairs) == 1
    # Written in the other order (a, found by b's key, is the one written): the same.
    async with SQLiteStore.open(tmp_path / "r.db") as store:
        await store.write_remote([incoming(b, "org-1")])
        await store.write_remote([incoming(a, "org-1")])
        assert list(await store.person_pairs()) == pairs


async def test_a_version_15_database_loses_its_own_key_rows_and_keeps_its_pairs(
    tmp_path: Path,
) -> None:
    a, b = _unalike_pair()
    c, d = registered("Fatou Ba"), registered("Fatou Ba", replica="laptop-d")
    path = tmp_path / "v15.db"
    async with SQLiteStore.open(path) as store:
        await store.write_remote([incoming(p, "org-1") for p in (a, c, d)])
        before = list(await store.person_pairs())
    without = _key_rows(path)
    ids = [a.id, c.id, d.id]
    _put_own_rows(path, ids, "org-1", version=15)
    assert _key_rows(path) == without | _own_rows(path, ids, "org-1")

    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 15
        assert await store.check() == []
        assert list(await store.person_pairs()) == before
        await store.write_remote([incoming(b, "org-1")])  # names a by its link
        pairs = list(await store.person_pairs())
        assert await store.check() == []
    assert not _key_rows(path) & _own_rows(path, [*ids, b.id], "org-1")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
    memory = await MemoryStore.open()
    await memory.write_remote([incoming(p, "org-1") for p in (a, c, d)])
    await memory.write_remote([incoming(b, "org-1")])
    assert pairs == list(await memory.person_pairs())
    assert len(pairs) == 2


async def test_own_key_rows_left_behind_change_no_pair_and_pass_the_check(
    tmp_path: Path,
) -> None:
    """A crash between the migration and the deletion of the rows leaves them: a card
    is then named twice by its own key, which is taken once."""
    a, b = _unalike_pair()
    path = tmp_path / "left.db"
    async with SQLiteStore.open(path) as store:
        await store.write_remote([incoming(a, "org-1")])
    _put_own_rows(path, [a.id], "org-1", version=None)
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from is None  # nothing to migrate: the rows stay
        assert await store.check() == []
        await store.write_remote([incoming(b, "org-1")])
        pairs = list(await store.person_pairs())
        assert await store.check() == []
    memory = await MemoryStore.open()
    assert pairs == await _written_later(memory, a, b)
    assert len(pairs) == 1
