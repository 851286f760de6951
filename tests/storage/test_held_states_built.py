"""held_states and the record cache build their named tuples without the Python
constructors (one C call each): the values and types are what the constructors made."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from caresync.storage import CachedRecord, HeldState, IncomingUpdate, SQLiteStore, card_digest
from caresync.storage.cache import RecordCache
from caresync.testing.store_data import Patient, card, incoming, registered


async def test_held_states_and_cached_entries_are_what_the_constructors_made(
    tmp_path: Path,
) -> None:
    a, b = registered("Awa Diop"), Patient(replica="laptop-c")
    db = tmp_path / "l.db"
    async with SQLiteStore.open(db) as store:
        await store.write_remote([incoming(a, "org-1"), IncomingUpdate(b.id, b.created, None)])
        store.cache.clear()
        held = await store.held_states([a.id, b.id, "absent"])
        cached = store.cache.get_many([a.id, b.id])
    conn = sqlite3.connect(db)
    rows = {
        rid: (vector, organisation, pending, key)
        for rid, vector, organisation, pending, key in conn.execute(
            "SELECT record_id, state_vector, organisation, pending, rk FROM records"
        )
    }
    conn.close()
    assert held == {
        a.id: HeldState(rows[a.id][0], False, card_digest(card(a).to_bytes())),
        b.id: HeldState(rows[b.id][0], False, None),
    }
    assert {rid: type(state) for rid, state in held.items()} == {a.id: HeldState, b.id: HeldState}
    for rid in (a.id, b.id):
        vector, organisation, pending, key = rows[rid]
        assert cached[rid] == CachedRecord(vector, organisation, bool(pending), key=key)
        assert type(cached[rid]) is CachedRecord
        assert cached[rid].key == key
        assert cached[rid].merged is None


def test_vectors_of_reads_what_get_many_reads() -> None:
    cache, twin = RecordCache(max_entries=3), RecordCache(max_entries=3)
    for store in (cache, twin):
        store.put("a", CachedRecord(b"\x01\x05\x03", "org", False, key=1))
        store.put("b", CachedRecord(b"\x00", None, True, b"merged", ((b"\x05", 3),), 2))
        store.put("c", CachedRecord(b"\x01\x06\x01", None, False))
    asked = ["c", "x", "a", "b", "a"]
    assert cache.vectors_of(asked) == {
        rid: (entry.state_vector, entry.pending) for rid, entry in twin.get_many(asked).items()
    }
    assert list(cache.vectors_of(asked)) == list(twin.get_many(asked))
    assert (cache.hits, cache.misses) == (twin.hits, twin.misses)
    # Both made the same entries the most recently used: the same one goes next.
    cache.put("d", CachedRecord(b"\x00", None, False))
    twin.put("d", CachedRecord(b"\x00", None, False))
    assert list(cache._entries) == list(twin._entries)
