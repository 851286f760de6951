"""A laptop database of the release before card digests (SQLite schema 14) migrates: the
step adds ``records.card_digest`` and the store fills it from the stored cards when it
opens, so that the next pull compares card references without reading a card."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from caresync.storage import SCHEMA_VERSION, IncomingUpdate, SQLiteStore, card_digest
from caresync.storage.migrations import create_schema
from caresync.testing.store_data import Patient, card, incoming, registered


async def test_a_version_14_database_gains_the_digest_of_every_stored_card(
    tmp_path: Path,
) -> None:
    # Records and cards written by this release, then the database taken back to what
    # version 14 held: the same rows without the column (a file of that release).
    a, b = registered("Awa Diop"), registered("Fatou Sow", replica="laptop-b")
    bare = Patient(replica="laptop-c")
    built = tmp_path / "now.db"
    async with SQLiteStore.open(built) as store:
        await store.write_remote(
            [
                incoming(a, "org-1"),
                incoming(b, "org-1"),
                IncomingUpdate(bare.id, bare.created, None),
            ]
        )
        expected = {
            rid: card_digest(c) for rid, c in (await store.person_card_bytes([a.id, b.id])).items()
        }
    old = tmp_path / "v14.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=14)
    conn.execute("ATTACH DATABASE ? AS now", (str(built),))
    conn.execute("BEGIN")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(records)")]
    assert "card_digest" not in columns
    conn.execute(
        f"INSERT INTO records ({', '.join(columns)}) SELECT {', '.join(columns)} FROM now.records"
    )
    for table in ("person_cards", "person_keys", "person_pairs"):
        conn.execute(f"INSERT INTO {table} SELECT * FROM now.{table}")
    # Version 14's log rows hold no state, and its record rows count them (each record
    # here was written once: its row's state is its state).
    conn.execute("INSERT INTO log SELECT id, rk, data, created_ms FROM now.log")
    conn.execute(
        "UPDATE records SET log_count = (SELECT COUNT(*) FROM log l WHERE l.rk = records.rk),"
        " log_bytes = (SELECT COALESCE(SUM(LENGTH(l.data)), 0) FROM log l"
        " WHERE l.rk = records.rk)"
    )
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE now")
    conn.close()

    async with SQLiteStore.open(old) as store:
        assert store.migrated_from == 14
        held = await store.held_states([a.id, b.id, bare.id])
        assert {rid: s.card_digest for rid, s in held.items()} == {**expected, bare.id: None}
        assert await store.person_cards([a.id, b.id]) == {a.id: card(a), b.id: card(b)}
        assert await store.check() == []
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
    async with SQLiteStore.open(old) as store:  # opened again: nothing to migrate or fill
        assert store.migrated_from is None


async def test_check_names_a_digest_that_is_not_its_cards(tmp_path: Path) -> None:
    a, b = registered("Awa Diop"), Patient(replica="laptop-c")
    async with SQLiteStore.open(tmp_path / "l.db") as store:
        await store.write_remote([incoming(a, "org-1"), IncomingUpdate(b.id, b.created, None)])
        assert await store.check() == []

        def damage(raw: sqlite3.Connection) -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute(
                "UPDATE records SET card_digest = ? WHERE record_id = ?", (b"\0" * 16, a.id)
            )
            raw.execute(
                "UPDATE records SET card_digest = ? WHERE record_id = ?", (b"\0" * 16, b.id)
            )
            raw.execute("COMMIT")

        await store._run("damaging", damage)
        problems = await store.check()
        assert any(a.id in p and "card digest" in p for p in problems)
        assert any("digest of a person card that is not stored" in p for p in problems)
