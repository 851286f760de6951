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


def test_put_fields_many_keeps_what_put_many_keeps() -> None:
    """The write's and the reads' entries given as fields are the entries put_many keeps:
    the same values, order, byte count and evictions."""
    entries = [
        ("a", CachedRecord(b"\x01\x05\x03", "org", False, key=1)),
        ("b", CachedRecord(b"\x00", None, True, b"merged" * 40, ((b"\x05", 3),), 2)),
        ("c", CachedRecord(b"\x01\x06\x01", None, False)),
        ("a", CachedRecord(b"\x01\x05\x04", "org", False, key=1)),
        ("d", CachedRecord(b"\x01\x07\x01", "org", False, None, ((b"\x07", 1),), 4)),
    ]
    cache, twin = (
        RecordCache(max_entries=3, max_bytes=400),
        RecordCache(max_entries=3, max_bytes=400),
    )
    cache.put_many(entries)
    twin.put_fields_many([(rid, tuple(entry)) for rid, entry in entries])
    assert cache._entries == twin._entries
    assert cache.size_bytes == twin.size_bytes
    assert twin.get_many(["a", "b", "c", "d"]) == cache.get_many(["a", "b", "c", "d"])


async def test_a_writes_cache_entries_are_its_plans_entries(tmp_path: Path) -> None:
    """What write_remote leaves in the cache is each planned record's ``cached`` entry
    (the record as committed), read back as CachedRecord."""
    a, b = registered("Awa Diop"), Patient(replica="laptop-c")
    async with SQLiteStore.open(tmp_path / "l.db") as store:
        await store.write_remote([incoming(a, "org-1"), IncomingUpdate(b.id, b.created, None)])
        written = store.cache.get_many([a.id, b.id])
        store.cache.clear()
        held = await store.held_states([a.id, b.id])
        read = store.cache.get_many([a.id, b.id])
    for rid in (a.id, b.id):
        assert type(written[rid]) is CachedRecord
        assert written[rid].state_vector == held[rid].state_vector == read[rid].state_vector
        assert (written[rid].organisation, written[rid].key) == (
            read[rid].organisation,
            read[rid].key,
        )
        assert written[rid].pending is read[rid].pending is False
