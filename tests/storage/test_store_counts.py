"""The counts the SQLite store keeps (schema version 12): open conflict rows and person
pairs by state, kept by triggers in the transaction of every write, equal a recount
after any sequence of writes, across reopening, and after migrating an older file."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caresync.records.persons import DIFFERENT_PEOPLE, SAME_PERSON, PairState, pair_of
from caresync.storage import IncomingUpdate, SQLiteStore
from caresync.storage.encrypt_in_place import encrypt_in_place
from caresync.storage.migrations import create_schema
from caresync.testing.store_data import Patient, card, conflict, registered, whole

NAMES = ("Awa Diop", "Awa Diope", "Fatou Sow")
DECISIONS = (None, SAME_PERSON, DIFFERENT_PEOPLE, "contested")


async def recount(store: SQLiteStore) -> dict[str, int]:
    """What the stored rows add up to (read through the rows, not the counts)."""
    found = {"conflicts": len(await store.conflicts())}
    for state in PairState:
        found[state.value] = len(await store.person_pairs(state=state))
    return found


async def kept(store: SQLiteStore) -> dict[str, int]:
    found = {"conflicts": await store.count_conflicts()}
    for state in PairState:
        found[state.value] = await store.count_person_pairs(state)
    return found


# One write: which record (of 6), its name, a link decision about another record, the
# conflict rows it is written with (None: left as they are), and how it is written.
WRITES = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.sampled_from(NAMES),
        st.tuples(st.integers(0, 5), st.sampled_from(DECISIONS)),
        st.one_of(st.none(), st.integers(0, 3)),
        st.sampled_from(["remote", "set_conflicts", "set_many", "reopen"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=WRITES)
def test_kept_counts_equal_a_recount_after_any_writes(
    writes: list[tuple[int, str, tuple[int, str | None], int | None, str]],
) -> None:
    asyncio.run(_kept_counts_equal_a_recount(writes))


async def _kept_counts_equal_a_recount(
    writes: list[tuple[int, str, tuple[int, str | None], int | None, str]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "replica.db"
        patients = [Patient(f"laptop-{i}") for i in range(6)]
        stored: set[int] = set()
        store = await SQLiteStore.open(path)
        try:
            for index, name, (other, decision), rows, how in writes:
                p = patients[index]
                if how == "reopen":
                    await store.close()
                    store = await SQLiteStore.open(path)
                elif how == "remote" or index not in stored:
                    p.edit("name", name)
                    p.edit("birthDate", "1990-04-12")
                    person = card(p)
                    if decision is not None and other != index:
                        links = ((patients[other].id, decision),)
                        person = dataclasses.replace(person, links=links)
                    written = None if rows is None else [conflict(p.id, n) for n in range(rows)]
                    await store.write_remote(
                        [IncomingUpdate(p.id, whole(p), written, "org-1", person)]
                    )
                    stored.add(index)
                elif how == "set_conflicts":
                    await store.set_conflicts(p.id, [conflict(p.id, n) for n in range(rows or 0)])
                else:
                    others = {patients[i].id: [conflict(patients[i].id, 9)] for i in stored}
                    await store.set_conflicts_many(others)
                assert await kept(store) == await recount(store)
            assert sum((await kept(store)).values()) == sum((await recount(store)).values())
            assert await store.check() == []
        finally:
            await store.close()


async def test_the_kept_counts_cover_every_pair_state(tmp_path: Path) -> None:
    """Possible, linked and disputed pairs each counted, and moved between states."""
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    async with SQLiteStore.open(tmp_path / "replica.db") as store:
        await store.write_remote(
            [
                IncomingUpdate(a.id, whole(a), [conflict(a.id)], "org-1", card(a)),
                IncomingUpdate(b.id, whole(b), None, "org-1", card(b)),
            ]
        )
        assert await store.count_person_pairs(PairState.POSSIBLE) == 1
        assert await store.count_conflicts() == 1
        linked = dataclasses.replace(card(a), links=((b.id, SAME_PERSON),))
        await store.set_conflicts_many({a.id: []}, persons={a.id: linked})
        assert await store.count_person_pairs(PairState.POSSIBLE) == 0
        assert await store.count_person_pairs(PairState.LINKED) == 1
        assert await store.count_conflicts() == 0
        disputed = dataclasses.replace(card(b), links=((a.id, DIFFERENT_PEOPLE),))
        await store.set_conflicts_many({}, persons={b.id: disputed})
        assert await store.count_person_pairs(PairState.DISPUTED) == 1
        assert await store.count_person_pairs() == 1
        assert await kept(store) == await recount(store)


async def test_a_version_11_database_migrates_with_its_counts(tmp_path: Path) -> None:
    """The step to version 12 counts what an older file holds, and the triggers go on."""
    path = tmp_path / "v11.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    create_schema(conn, now_ms=1, version=11)
    a, b, c = (registered("Awa Diop", replica=f"laptop-{n}") for n in "abc")
    pairs = [pair_of(card(a), card(b)), pair_of(card(a), card(c))]
    for row in (conflict(a.id, 0), conflict(a.id, 1), conflict(b.id, 0)):
        conn.execute(
            "INSERT INTO conflicts (record_id, id, kind, subject, severity, payload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (row.record_id, row.id, row.kind, row.subject, row.severity, row.payload),
        )
    for pair in pairs:
        assert pair is not None
        conn.execute(
            "INSERT INTO person_pairs (first, second, organisation, state, payload)"
            " VALUES (?, ?, 'org-1', ?, ?)",
            (pair.first.record_id, pair.second.record_id, pair.state.value, pair.to_bytes()),
        )
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert store.migrated_from == 11
        assert await store.count_conflicts() == 3
        assert await store.count_person_pairs() == 2
        assert await store.count_person_pairs(PairState.POSSIBLE) == 2
        assert await kept(store) == await recount(store)
        await store.write_remote([IncomingUpdate(a.id, whole(a), None, "org-1", card(a))])
        assert await store.count_conflicts() == 3  # None: the rows stay
        a.edit("heightCm", 170)
        await store.write_remote([IncomingUpdate(a.id, whole(a), [], "org-1", card(a))])
        assert await store.count_conflicts() == 1  # a's two rows replaced by none
        assert await kept(store) == await recount(store)


async def test_check_names_a_count_that_drifted(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    async with SQLiteStore.open(path) as store:
        p = registered("Awa Diop")
        await store.write_remote([IncomingUpdate(p.id, whole(p), [conflict(p.id)], "org-1")])
        assert await store.check() == []
    conn = sqlite3.connect(path)
    conn.execute("UPDATE counts SET n = 7 WHERE name = 'conflicts'")
    conn.commit()
    conn.close()
    async with SQLiteStore.open(path) as store:
        assert await store.check() == ["the kept count of conflicts is 7, but 1 rows are stored"]


async def test_encrypting_a_laptop_in_place_keeps_its_counts(tmp_path: Path) -> None:
    """The copy an encryption writes (every table, then the triggers) counts no row twice."""
    path = tmp_path / "laptop.db"
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    async with SQLiteStore.open(path) as store:
        await store.write_remote(
            [
                IncomingUpdate(
                    a.id, whole(a), [conflict(a.id, 0), conflict(a.id, 1)], "o", card(a)
                ),
                IncomingUpdate(b.id, whole(b), None, "o", card(b)),
            ]
        )
        before = await kept(store)
    assert before["conflicts"] == 2
    assert before[PairState.POSSIBLE.value] == 1
    key = os.urandom(32)
    encrypt_in_place(path, key, None)
    async with SQLiteStore.open(path, key=key) as store:
        assert await kept(store) == before == await recount(store)
        assert await store.check() == []
