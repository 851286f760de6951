"""SQLite schema 16 against the memory store and the brute-force oracle, over seeded
random histories: link decisions made, undone and disputed, records moving between
organisations (None to one), written one by one and in batches; in a fresh file, one migrated from
version 15 (own-key rows put back, version set to 15) and one keeping those rows
(a crash between the migration and their deletion)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from store_helpers import undo_version_18, undo_version_19, undo_version_20

from caresync.records.persons import DIFFERENT_PEOPLE, SAME_PERSON, UNLINKED, link_path
from caresync.storage import MemoryStore, SQLiteStore
from caresync.storage.sqlite.persons import _key_hash
from caresync.testing.store_data import Patient, card, incoming, oracle, registered

_NAMES = ["Awa Diop", "Awa Diope", "Moussa Sarr", "Fatou Ba", "Fatou Bah"]
_BIRTHS = ["1990-04-12", "1990-12-04", "1971-01-30", "1990"]
_ORGS = ["org-1", "org-2", None]


def _put_own_rows(path: Path, orgs: dict[str, str | None], version: int | None) -> None:
    """What a database of before version 16 holds: each card's own key as a row."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR IGNORE INTO person_keys (hash, rk) SELECT ?, rk FROM records"
            " WHERE record_id = ?",
            [(_key_hash(org or "", f"r:{rid}"), rid) for rid, org in sorted(orgs.items())],
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


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("reopen", ["fresh", "from-15", "rows-left"])
async def test_pairs_match_memory_and_oracle(tmp_path: Path, seed: int, reopen: str) -> None:
    rng = random.Random(seed)
    people = [
        registered(rng.choice(_NAMES), rng.choice(_BIRTHS), replica=f"r{i}") for i in range(8)
    ]
    org: dict[str, str | None] = {p.id: rng.choice(_ORGS) for p in people}
    written = {p.id for p in people[:5]}
    path = tmp_path / "l.db"
    memory = await MemoryStore.open()
    store = await SQLiteStore.open(path)
    try:
        first = [incoming(p, org[p.id]) for p in people[:5]]
        await store.write_remote(first)
        await memory.write_remote(first)
        if reopen != "fresh":
            await store.close()
            _put_own_rows(path, org, 15 if reopen == "from-15" else None)
            store = await SQLiteStore.open(path)
            assert store.migrated_from == (15 if reopen == "from-15" else None)
        for step in range(30):  # bounded
            p: Patient = rng.choice(people)
            other = rng.choice([q for q in people if q is not p])
            action = rng.choice([0, 0, 0, 1, 2, 3])
            if action == 0:
                p.edit(link_path(other.id), rng.choice([SAME_PERSON, DIFFERENT_PEOPLE, UNLINKED]))
            elif action == 1 and org[p.id] is None:  # an organisation is only ever given
                org[p.id] = rng.choice(_ORGS[:2])
            elif action == 2:
                p.edit("name", rng.choice(_NAMES))
            batch = [p] if rng.random() < 0.6 else [p, other]
            updates = [incoming(q, org[q.id]) for q in batch]
            await store.write_remote(updates)
            await memory.write_remote(updates)
            written |= {q.id for q in batch}
            people_now = {q.id: (org[q.id], card(q)) for q in people if q.id in written}
            want = oracle(people_now)
            got = list(await store.person_pairs())
            assert got == list(await memory.person_pairs()), (seed, step)
            assert got == want, (seed, step)
        assert await store.check() == []
    finally:
        await store.close()
