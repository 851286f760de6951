"""The person index (issue 13, item 3), on every store: cards, blocking keys and pairs,
written in the same transaction as their record.

A pair is a function of its two cards, so every test can compare what a store
holds with what :func:`pair_of` makes of the final cards (the ``oracle``),
whatever order and batches the cards arrived in.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from store_helpers import Patient, conflict
from tests.sqlite_trace import traced, write_transactions

from caresync import (
    CorruptDatabaseError,
    InvalidInputError,
    InvalidUpdateError,
    UnknownRecordError,
)
from caresync.records.persons import (
    DIFFERENT_PEOPLE,
    SAME_PERSON,
    PairState,
    PersonCard,
    PersonPair,
    link_path,
    pair_of,
    person_card,
)
from caresync.storage import IncomingUpdate, MemoryStore, SQLiteStore, Store
from caresync.storage.migrations import create_schema


def registered(
    name: str, birth: str = "1990-04-12", *, sex: str | None = "female", replica: str = "laptop-a"
) -> Patient:
    """A record with its identifying fields written (each write's update kept)."""
    p = Patient(replica)
    p.edit("name", name)
    p.edit("birthDate", birth)
    if sex is not None:
        p.edit("sex", sex)
    return p


def whole(p: Patient) -> bytes:
    """The record as one update (its creation and every edit)."""
    return p.record.update_since()


def card(p: Patient) -> PersonCard:
    return person_card(p.record)


def incoming(p: Patient, org: str | None = None, *, person: bool = True) -> IncomingUpdate:
    return IncomingUpdate(p.id, whole(p), None, org, card(p) if person else None)


def oracle(cards: Mapping[str, tuple[str | None, PersonCard]]) -> list[PersonPair]:
    """Every pair the final cards make: cards of one organisation sharing a key, compared."""
    ids = sorted(cards)
    pairs = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            (org_a, card_a), (org_b, card_b) = cards[a], cards[b]
            if org_a == org_b and card_a.blocking_keys() & card_b.blocking_keys():
                pair = pair_of(card_a, card_b)
                if pair is not None:
                    pairs.append(pair)
    return pairs


@asynccontextmanager
async def another(kind: str, path: Path) -> AsyncIterator[Store]:
    """A fresh store of the same kind as the fixture's."""
    if kind == "memory":
        async with MemoryStore.open() as memory:
            yield memory
    else:
        async with SQLiteStore.open(path) as sqlite:
            yield sqlite


# ------------------------------------------------------------------ pairs


async def test_two_matching_records_make_one_possible_pair_listed_for_either(
    store: Store,
) -> None:
    a, b = registered("Aissatou Ndiaye"), registered("Aïssatou N'Diaye", replica="laptop-b")
    other = registered("Moussa Diop", "1950-01-01", sex="male")
    await store.write_local(a.id, whole(a), conflicts=None, organisation="org-1", person=card(a))
    await store.write_remote([incoming(b, "org-1"), incoming(other, "org-1")])
    [pair] = await store.person_pairs()
    assert pair == pair_of(card(a), card(b))
    assert pair.state is PairState.POSSIBLE
    assert set(pair.record_ids) == {a.id, b.id}
    assert await store.person_pairs(a.id) == [pair]
    assert await store.person_pairs(b.id) == [pair]
    assert await store.person_pairs(other.id) == []
    assert await store.person_pairs(state=PairState.POSSIBLE, organisation="org-1") == [pair]
    assert await store.person_pairs(a.id, state=PairState.LINKED) == []
    assert await store.person_pairs(organisation="org-2") == []
    assert await store.person_cards([b.id, "nobody", a.id]) == {b.id: card(b), a.id: card(a)}
    assert await store.check() == []


@pytest.mark.parametrize("order", ["a then b", "b then a", "one batch", "one local, one batch"])
async def test_the_pairs_do_not_depend_on_the_order_the_cards_arrive(
    store: Store, store_kind: str, tmp_path: Path, order: str
) -> None:
    a = registered("Awa Diop", "1984-02-03")
    b = registered("Awa Diop", "1984-03-02", replica="laptop-b")  # day and month swapped
    c = registered("Fatou Sow", "1990-01-01")
    c.edit(link_path(a.id), SAME_PERSON)
    d = registered("Awa Diop", "1984-02-03", sex="male")  # the sexes differ: below threshold
    everyone = [a, b, c, d]
    expected = oracle({p.id: ("org-1", card(p)) for p in everyone})
    assert {p.state for p in expected} == {PairState.POSSIBLE, PairState.LINKED}
    async with another(store_kind, tmp_path / f"{order}.db") as fresh:
        if order == "a then b":
            for p in everyone:
                await fresh.write_remote([incoming(p, "org-1")])
        elif order == "b then a":
            for p in reversed(everyone):
                await fresh.write_remote([incoming(p, "org-1")])
        elif order == "one batch":
            await fresh.write_remote([incoming(p, "org-1") for p in everyone])
        else:
            await fresh.write_local(
                c.id, whole(c), conflicts=None, organisation="org-1", person=card(c)
            )
            await fresh.write_remote([incoming(p, "org-1") for p in (d, b, a)])
        assert await fresh.person_pairs() == expected
        for p in everyone:
            assert await fresh.person_pairs(p.id) == [x for x in expected if p.id in x.record_ids]
        assert await fresh.check() == []


@pytest.mark.parametrize("seed", range(6))
async def test_cards_in_any_batches_leave_exactly_the_pairs_of_the_final_cards(
    store: Store, seed: int
) -> None:
    """Random cards (few names and dates, so many collide), rewritten many times, in
    batches of every kind: the store holds what the final cards make, no more, no less."""
    rng = random.Random(seed)
    names = [("awa", "diop"), ("awa", "dioop"), ("moussa", "sow"), ("fatou", "sow"), ("awa",)]
    births = ["1984-02-03", "1984-03-02", "1984-02-04", "1984", "1990-01-01"]
    patients = [Patient() for _ in range(12)]
    orgs = {p.id: rng.choice([None, "org-1", "org-1"]) for p in patients}

    def random_card(p: Patient) -> PersonCard:
        links = tuple(
            sorted(
                {
                    (rng.choice(patients).id, rng.choice([SAME_PERSON, DIFFERENT_PEOPLE]))
                    for _ in range(rng.randrange(3) // 2)
                }
                - {(p.id, SAME_PERSON), (p.id, DIFFERENT_PEOPLE)}
            )
        )
        return PersonCard(
            p.id,
            names=(rng.choice(names),),
            birth_dates=(rng.choice(births),),
            sexes=(rng.choice(["female", "male"]),) if rng.random() < 0.3 else (),
            identifiers=(("nin", rng.choice(["A1234", "B5678"])),) if rng.random() < 0.2 else (),
            links=links,
        )

    final: dict[str, tuple[str | None, PersonCard]] = {}
    for p in patients:  # the records, some with a first card
        person = random_card(p) if rng.random() < 0.5 else None
        await store.write_remote([IncomingUpdate(p.id, p.created, None, orgs[p.id], person)])
        if person is not None:
            final[p.id] = (orgs[p.id], person)
    for _ in range(25):
        chosen = rng.sample(patients, rng.randrange(1, 6))
        way = rng.choice(["remote", "local", "reindex"])
        cards = {p.id: random_card(p) for p in chosen}
        if way == "remote":
            # Sometimes a record twice in one batch: its last card is the one kept.
            items = [IncomingUpdate(p.id, p.edit(), None, None, cards[p.id]) for p in chosen]
            if rng.random() < 0.3:
                early = random_card(chosen[0])
                items.insert(0, IncomingUpdate(chosen[0].id, chosen[0].edit(), None, None, early))
            await store.write_remote(items)
        elif way == "local":
            for p in chosen:
                await store.write_local(p.id, p.edit(), conflicts=None, person=cards[p.id])
        else:
            await store.set_conflicts_many({}, persons=cards)
        final.update((rid, (orgs[rid], c)) for rid, c in cards.items())
        assert await store.person_pairs() == oracle(final)
    assert await store.person_cards([p.id for p in patients]) == {
        p.id: final[p.id][1] for p in patients if p.id in final
    }
    assert await store.check() == []


async def test_a_card_that_no_longer_matches_removes_the_pair(store: Store) -> None:
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    await store.write_remote([incoming(a), incoming(b)])
    assert len(await store.person_pairs()) == 1
    update = b.edit("name", "Mariama Ba")  # a typing error corrected
    await store.write_local(b.id, update, conflicts=None, person=card(b))
    assert await store.person_pairs() == []
    assert await store.person_pairs(a.id) == []
    assert await store.person_cards([b.id]) == {b.id: card(b)}
    update = b.edit("name", "Awa Diop")  # and back: the pair again
    await store.write_remote([IncomingUpdate(b.id, update, None, person=card(b))])
    assert await store.person_pairs(a.id) == [pair_of(card(a), card(b))]


async def test_a_link_decision_makes_a_linked_pair_even_when_names_differ(store: Store) -> None:
    a = registered("Aissatou Ndiaye", "1990-04-12")
    b = registered("Mme Awa Sow", "1971-11-30", replica="laptop-b")
    b.edit(link_path(a.id), SAME_PERSON)
    assert pair_of(card(a), card(b)) is not None
    await store.write_remote([incoming(a, "org-1")])
    await store.write_local(b.id, whole(b), conflicts=None, organisation="org-1", person=card(b))
    [pair] = await store.person_pairs(a.id)
    assert pair.state is PairState.LINKED
    assert pair.score < 0  # nothing alike: the decision alone links them
    assert await store.person_pairs(state=PairState.LINKED) == [pair]
    assert await store.person_pairs(state=PairState.POSSIBLE) == []
    # a decides otherwise: the decisions disagree
    update = a.edit(link_path(b.id), DIFFERENT_PEOPLE)
    await store.write_remote([IncomingUpdate(a.id, update, None, person=card(a))])
    [pair] = await store.person_pairs(b.id)
    assert pair.state is PairState.DISPUTED
    assert await store.person_pairs(state="disputed") == [pair]  # type: ignore[arg-type]


async def test_records_of_different_organisations_never_pair(store: Store) -> None:
    one = [registered("Awa Diop", replica=f"laptop-{n}") for n in range(5)]
    one[4].edit(link_path(one[1].id), SAME_PERSON)  # a decision about a record it cannot see
    await store.write_remote(
        [
            incoming(one[0], "org-1"),
            incoming(one[1], "org-2"),
            incoming(one[2]),  # no organisation: pairs only with records of none
            incoming(one[3]),
            incoming(one[4], "org-3"),
        ]
    )
    [pair] = await store.person_pairs()
    assert set(pair.record_ids) == {one[2].id, one[3].id}
    assert await store.person_pairs(organisation="org-1") == []
    assert await store.person_pairs(one[1].id) == []
    assert await store.check() == []


async def test_a_record_given_an_organisation_later_is_compared_within_it(store: Store) -> None:
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    await store.write_remote([incoming(a, "org-1"), incoming(b, None)])
    assert await store.person_pairs() == []
    stored = card(b)
    await store.write_remote([IncomingUpdate(b.id, b.edit(), None, "org-1")])  # no new card
    assert await store.person_cards([b.id]) == {b.id: stored}
    [pair] = await store.person_pairs(organisation="org-1")
    assert set(pair.record_ids) == {a.id, b.id}
    assert await store.check() == []


# ------------------------------------------------------------ what is refused


async def test_a_card_of_another_record_is_refused_and_nothing_is_written(store: Store) -> None:
    p, q = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    with pytest.raises(InvalidInputError, match=q.id):
        await store.write_local(p.id, whole(p), conflicts=[conflict(p.id)], person=card(q))
    with pytest.raises(InvalidInputError, match=q.id):
        IncomingUpdate(p.id, whole(p), None, person=card(q))
    with pytest.raises(InvalidInputError):
        await store.write_local(p.id, whole(p), conflicts=None, person="card")  # type: ignore[arg-type]
    assert await store.count_records() == 0
    assert await store.pending_count() == 0
    await store.write_remote([incoming(p, person=False), incoming(q, person=False)])
    with pytest.raises(InvalidInputError, match=q.id):
        await store.set_conflicts_many({p.id: [conflict(p.id)]}, persons={p.id: card(q)})
    with pytest.raises(UnknownRecordError, match="nobody"):
        await store.set_conflicts_many(
            {p.id: [conflict(p.id)]}, persons={p.id: card(p), "nobody": PersonCard("nobody")}
        )
    assert await store.count_conflicts() == 0
    assert await store.person_cards([p.id, q.id]) == {}
    assert await store.person_pairs() == []


async def test_a_batch_that_fails_stores_none_of_its_cards(store: Store) -> None:
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    await store.write_remote([incoming(a)])
    with pytest.raises(InvalidUpdateError):
        await store.write_remote(
            [incoming(b), IncomingUpdate(a.id, b"not an update", None, person=card(a))]
        )
    assert await store.person_cards([a.id, b.id]) == {a.id: card(a)}
    assert await store.person_pairs() == []
    assert not await store.has_record(b.id)


async def test_no_card_keeps_the_stored_card_and_its_pairs(store: Store) -> None:
    a, b = registered("Awa Diop"), registered("Awa Diop", replica="laptop-b")
    await store.write_remote([incoming(a), incoming(b)])
    before = await store.person_pairs()
    assert len(before) == 1
    stale = card(a)
    a.edit("name", "Mariama Ba")  # changed, but the writer says nothing of the card
    await store.write_local(a.id, a.updates[-1], conflicts=None)
    await store.write_remote([IncomingUpdate(a.id, a.edit(), None)])
    await store.set_conflicts_many({a.id: [conflict(a.id)]})
    assert await store.person_cards([a.id]) == {a.id: stale}
    assert await store.person_pairs() == before


async def test_a_reindex_through_set_conflicts_many_rebuilds_the_pairs(store: Store) -> None:
    patients = [registered("Awa Diop", replica=f"laptop-{n}") for n in range(3)]
    patients[2].edit("name", "Fatou Sow")
    await store.write_remote([incoming(p, "org-1", person=False) for p in patients])
    assert await store.person_pairs() == []  # an index built before this version: empty
    cards = {p.id: card(p) for p in patients}
    await store.set_conflicts_many({p.id: [] for p in patients}, persons=cards)
    assert await store.person_pairs() == oracle({rid: ("org-1", c) for rid, c in cards.items()})
    assert len(await store.person_pairs(organisation="org-1")) == 1  # the stored organisation
    assert await store.person_cards(list(cards)) == cards
    assert await store.check() == []


# ------------------------------------------------------------------ SQLite


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
        await store.write_remote(
            [IncomingUpdate(b.id, b.edit("heightCm", 170), None, person=card(b))]
        )
        assert await store.person_pairs() == [pair_of(card(a), card(b))]


async def test_a_write_with_a_card_is_one_transaction_of_indexed_lookups(tmp_path: Path) -> None:
    patients = [registered("Awa Diop", replica=f"laptop-{n}") for n in range(30)]
    async with SQLiteStore.open(tmp_path / "replica.db", cache_entries=0) as store:
        await store.write_remote([incoming(p, "org-1") for p in patients[:20]])
        async with traced(store) as statements:
            await store.write_remote([incoming(p, "org-1") for p in patients[20:]])
            p = patients[0]
            await store.write_local(p.id, p.edit("heightCm", 170), conflicts=None, person=card(p))
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


# ------------------------------------------------------------------ imports


async def test_an_import_indexes_the_cards_given_in_the_same_write(
    store: Store, tmp_path: Path
) -> None:
    a, b = registered("Awa Ndiaye"), registered("Awa N'Diaye", replica="laptop-b")
    await store.write_local(a.id, whole(a), conflicts=None, organisation="org-1", person=card(a))
    source = MemoryStore()
    await source.write_local(b.id, whole(b), conflicts=None, organisation="org-1")
    export = tmp_path / "unsynced.caresync"
    assert await source.export_unsynced(export) == 1
    assert await store.import_unsynced(export, persons={b.id: card(b)}) == 1
    [pair] = await store.person_pairs(b.id)
    assert pair == pair_of(card(a), card(b))
    assert await store.check() == []


async def test_an_import_refuses_a_card_of_a_record_it_does_not_touch(
    store: Store, tmp_path: Path
) -> None:
    a, b = registered("Awa Ndiaye"), registered("Awa N'Diaye", replica="laptop-b")
    source = MemoryStore()
    await source.write_local(b.id, whole(b), conflicts=None, organisation="org-1")
    export = tmp_path / "unsynced.caresync"
    await source.export_unsynced(export)
    with pytest.raises(InvalidInputError, match="does not touch"):
        await store.import_unsynced(export, persons={a.id: card(a)})
    assert await store.record_ids() == []  # nothing imported
    assert await store.person_cards([a.id, b.id]) == {}
