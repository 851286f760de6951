"""A first copy's person cards read without making a card each (``PersonCards``).

A laptop reads 100,000s of cards off the wire in a first copy and compares a few
thousand (those the server's pairs name). ``PersonCards.read`` checks each card as
``PersonCard.from_bytes`` does and keeps it decoded; a card is made only when asked
for, and ``row_keys`` gives its blocking keys without one. Held to the ways before:

- every card, or refusal, is the one ``from_bytes`` gives (and ``card_from_wire``'s
  RemoteProtocolError for a bad card or another record's);
- its key rows are its blocking keys but its own, as their definition gives them;
- a copy stored from ``PersonCards`` leaves the laptop's files exactly as the copy
  stored from cards (records' rows, cards, key rows set aside and moved, pairs), in
  SQLite and in the memory store, with or without the server's pairs.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.storage.test_copy_pairs import index, key_rows, pages, serve, twice_registered
from tests.storage.test_copy_persons import _card_objects, _spellings, clinics
from tests.test_person_matching import _any_cards, _keys_as_sets

from caresync import Record
from caresync.exceptions import InvalidInputError, RemoteProtocolError
from caresync.records.crdt import state_vector_of
from caresync.records.persons import PersonCard, PersonCards
from caresync.replication.checked import card_from_wire
from caresync.storage import MemoryStore, SQLiteStore, Store
from caresync.storage.base import CopiedRecords, CopyPage
from caresync.storage.sqlite.persons import _copied_key_rows, _key_hash

_ODD_BYTES = [
    b'{"v":1,"id":"a","names":[["\\ud800"]]}',  # a lone surrogate: refused
    b'{"v":1,"id":"a","display":"\\ud83d\\ude00"}',  # a pair: the careful passes take it
    b'{"v":1,"id":"a","names":[["\xed\xa0\x80x","bob"]],"birth":["1990-01-01"]}',
    b'{"v":2,"id":"a"}',
    b'{"v":1,"id":"a","links":[["b","same-person"]]}',
    b'{"v":1,"id":"a","links":[["a","same-person"]],"birth":["1990"],"names":[["x","y"]]}',
    b'{"v":1,"id":"a","links":[["b","same"]]}',
    b'{"v":1,"id":""}',
    b'{"v":1,"id":"a","other":1}',
    b'\xef\xbb\xbf{"v":1,"id":"a"}',
    b' {"v":1,"id":"a"}',
    b'{"v":1,"v":2,"id":"a"}',
    b'{"v":1,"id":"a"}\x00',
    b'{"v":1,"id":"a","names":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"",
    b"[]",
]


def _from_bytes(data: bytes) -> PersonCard | None:
    try:
        return PersonCard.from_bytes(data)
    except InvalidInputError:
        return None


def _read_alike(record_id: str, data: bytes) -> None:
    """``PersonCards.read`` of one card gives what ``from_bytes`` and ``card_from_wire``
    give, or refuses what they refuse, and its key rows are the card's."""
    card = _from_bytes(data)
    if card is None or card.record_id != record_id:
        with pytest.raises(InvalidInputError):
            PersonCards.read([(record_id, data)])
        with pytest.raises(RemoteProtocolError, match=re.escape(f"record {record_id} with")):
            PersonCards.read([(record_id, data)], card_from_wire)
        return
    for declined in (None, card_from_wire):
        cards = (
            PersonCards.read([(record_id, data)])
            if declined is None
            else PersonCards.read([(record_id, data)], declined)
        )
        # The keys first (no card made yet), then the card; each key once.
        keys = list(cards.row_keys(record_id))
        assert len(keys) == len(set(keys))
        assert set(keys) == _keys_as_sets(card) - {"r:" + record_id}
        assert list(cards) == [record_id]
        assert record_id in cards
        assert len(cards) == 1
        assert cards.data == {record_id: data}
        assert cards[record_id] == card
        assert set(cards.row_keys(record_id)) == _keys_as_sets(card) - {"r:" + record_id}


@settings(max_examples=1000, deadline=None)
@given(_any_cards)
def test_a_card_as_written_reads_alike(card: PersonCard) -> None:
    _read_alike(card.record_id, card.to_bytes())


@settings(max_examples=1000, deadline=None)
@given(_card_objects(), _spellings)
def test_odd_cards_read_or_are_refused_alike(raw: dict[str, object], spell: object) -> None:
    data = spell(raw).encode()  # type: ignore[operator]
    record_id = raw.get("id")
    _read_alike(record_id if isinstance(record_id, str) and record_id else "a", data)


@pytest.mark.parametrize("data", _ODD_BYTES)
def test_odd_bytes_read_or_are_refused_alike(data: bytes) -> None:
    _read_alike("a", data)


# The common shape row_keys_of makes in one step (one birth date, one name of two
# tokens, no identifier or phone), with tokens that start alike, are equal, or order
# either way, and birth dates of every length a card holds.
_two_tokens = st.text("abo|", min_size=1, max_size=5)
_common_cards = st.builds(
    PersonCard,
    record_id=st.text("abc-1", min_size=1, max_size=5),
    names=st.tuples(st.tuples(_two_tokens, _two_tokens)),
    birth_dates=st.tuples(st.sampled_from(["1990-04-12", "1990-04", "1991", "", "1990-4-120"])),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_common_cards, _any_cards), max_size=8), st.data())
def test_row_keys_of_many_cards_are_each_cards_row_keys(
    cards: list[PersonCard], data: st.DataObject
) -> None:
    """``row_keys_of`` gives, card by card and in the order asked, what ``row_keys``
    gives (the same keys in the same order, which the copy's key rows follow), and
    those are each card's blocking keys but its own, each once; for cards read by
    msgspec, cards the careful way made (link decisions), and a record asked twice."""
    read = PersonCards.read([(card.record_id, card.to_bytes()) for card in cards])
    wanted = data.draw(st.lists(st.sampled_from(list(read)), max_size=10) if read else st.just([]))
    found = read.row_keys_of(wanted)
    assert [list(keys) for keys in found] == [list(read.row_keys(rid)) for rid in wanted]
    for record_id, keys in zip(wanted, found, strict=True):
        assert len(list(keys)) == len(set(keys))
        assert set(keys) == _keys_as_sets(read[record_id]) - {"r:" + record_id}


def test_row_keys_of_the_common_shape_in_the_order_of_their_definition() -> None:
    """Worked by hand: both day keys (or one, for tokens that start alike), then the
    year key with the tokens in order; no day key for a birth date without its day."""
    cards = PersonCards.read(
        (card.record_id, card.to_bytes())
        for card in (
            PersonCard("a", names=(("ndiaye", "awa"),), birth_dates=("1990-04-12",)),
            PersonCard("b", names=(("awa", "awaa"),), birth_dates=("1990-04-12",)),
            PersonCard("c", names=(("awa", "awa"),), birth_dates=("1990-04-12",)),
            PersonCard("d", names=(("awa", "ndiaye"),), birth_dates=("1990",)),
        )
    )
    assert cards.row_keys_of(["a", "b", "c", "d"]) == [
        ["d:1990-04-12|ndi", "d:1990-04-12|awa", "y:1990|awa|ndiaye"],
        ["d:1990-04-12|awa", "y:1990|awa|awaa"],
        ["d:1990-04-12|awa"],
        ["y:1990|awa|ndiaye"],
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.text(min_size=1, max_size=4)),
    st.lists(st.lists(st.text(max_size=6), max_size=4), max_size=6),
)
def test_copied_key_rows_are_each_keys_stored_hash_with_its_record(
    organisation: str | None, keys: list[list[str]]
) -> None:
    """The rows set aside for a copy's keys: (``_key_hash`` of the organisation and the
    key, the rk of its card), card after card, key after key."""
    rks = [10 + n for n in range(len(keys))]
    column = "" if organisation is None else organisation
    assert list(_copied_key_rows(organisation, rks, keys)) == [
        (_key_hash(column, key), rk)
        for rk, card_keys in zip(rks, keys, strict=True)
        for key in card_keys
    ]


def test_the_card_of_another_record_is_refused_naming_both() -> None:
    data = PersonCard("b", names=(("awa", "ndiaye"),), birth_dates=("1990-04-12",)).to_bytes()
    with pytest.raises(RemoteProtocolError, match="sent record a with the card of b"):
        PersonCards.read([("a", data)], card_from_wire)
    with pytest.raises(InvalidInputError, match="record b's, not a's"):
        PersonCards.read([("a", data)])


def test_a_record_given_twice_keeps_its_last_card() -> None:
    first = PersonCard("a", names=(("awa",),)).to_bytes()
    last = b'{"v":1,"id":"a","links":[["b","same-person"]]}'  # the careful way
    cards = PersonCards.read([("a", first), ("a", last)])
    assert cards.data == {"a": last}
    assert cards["a"] == PersonCard.from_bytes(last)
    again = PersonCards.read([("a", last), ("a", first)])
    assert again.data == {"a": first}
    assert again["a"] == PersonCard.from_bytes(first)


def test_only_keeps_the_cards_asked_for_unmade() -> None:
    datas = [
        (rid, PersonCard(rid, names=((rid, "x"),), birth_dates=("1990-01-02",)).to_bytes())
        for rid in ("a", "b", "c")
    ]
    cards = PersonCards.read(datas)
    part = cards.only({"a", "c", "z"})
    assert list(part) == ["a", "c"]
    assert dict(part.data) == {"a": datas[0][1], "c": datas[2][1]}
    assert part._cards == {}  # nothing made
    assert part["c"] == PersonCard.from_bytes(datas[2][1])


# ----------------------------------------------------------------- stored alike


def _copied(org: str, page: CopyPage, *, unmade: bool, pairs: bool) -> CopiedRecords:
    ids = [rid for rid, _ in page.records]
    updates = [update for _, update in page.records]
    cards: dict[str, PersonCard] | PersonCards
    if unmade:
        cards = PersonCards.read(page.cards.items())
        sent: dict[str, bytes] = dict(cards.data)
    else:
        cards = {rid: PersonCard.from_bytes(data) for rid, data in page.cards.items()}
        sent = dict(page.cards)
    return CopiedRecords(
        ids,
        updates,
        [state_vector_of(u) for u in updates],
        org,
        {},
        cards,
        sent,
        list(page.pairs) if pairs else None,
    )


def _tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """What a copy leaves in a laptop's file, but the times."""
    conn = sqlite3.connect(path)
    try:
        return {
            "records": sorted(
                conn.execute(
                    "SELECT record_id, organisation, state_vector, pending, log_count,"
                    " log_bytes, rk, card_digest FROM records"
                )
            ),
            "cards": sorted(conn.execute("SELECT record_id, organisation, card FROM person_cards")),
            "keys": key_rows(path),
            "aside": key_rows(path, "person_keys_copied"),
            "pairs": sorted(conn.execute("SELECT * FROM person_pairs")),
        }
    finally:
        conn.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics(), st.integers(1, 5), st.integers(0, 2**32), st.booleans(), st.data())
def test_a_copy_stored_from_unmade_cards_leaves_the_same_files(
    records: list[tuple[Record, str]],
    size: int,
    seed: int,
    pairs: bool,
    data: st.DataObject,
) -> None:
    ids = sorted(record.record_id for record, _org in records)

    async def run(folder: Path) -> None:
        async with SQLiteStore.open(folder / "server.db") as server:
            await serve(server, records, seed)
            batches = [
                (org, page) for org in ("org-1", "org-2") for page in await pages(server, org, size)
            ]
        cut = data.draw(st.integers(0, len(batches)), label="checked after")
        found: dict[str, object] = {}
        for name, unmade in (("made", False), ("unmade", True)):
            memory = await MemoryStore.open()
            async with SQLiteStore.open(folder / f"{name}.db") as laptop:
                stores: tuple[Store, ...] = (laptop, memory)
                for n, (org, page) in enumerate(batches, start=1):
                    for store in stores:
                        batch = _copied(org, page, unmade=unmade, pairs=pairs)
                        if n == len(batches):
                            batch = CopiedRecords(
                                batch.record_ids,
                                batch.updates,
                                batch.state_vectors,
                                batch.organisation,
                                batch.conflicts,
                                batch.persons,
                                batch.card_bytes,
                                batch.pairs,
                                last=True,
                            )
                        await store.write_copy(
                            batch, checkpoint=("copy.resume", page.records[-1][0])
                        )
                    if n == cut:
                        found[f"{name} at {n}"] = _tables(folder / f"{name}.db")
                found[name] = await index(laptop, ids)
                found[f"{name} memory"] = (await index(memory, ids))[:4]
            found[f"{name} file"] = _tables(folder / f"{name}.db")
            await memory.close()
        assert found["unmade file"] == found["made file"]
        assert found["unmade"] == found["made"]
        assert found["unmade memory"] == found["made memory"] == found["made"][:4]  # type: ignore[index]
        if cut:
            assert found[f"unmade at {cut}"] == found[f"made at {cut}"]

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))


def test_a_copy_with_pairs_makes_only_the_cards_a_pair_names(tmp_path: Path) -> None:
    """The point of it: of a batch's cards, only those a server's pair names are made."""

    async def run() -> None:
        async with SQLiteStore.open(tmp_path / "server.db") as server:
            await serve(server, [*twice_registered(), *_strangers(6)], 0)
            (page,) = await pages(server, "org-1", 100)
        batch = _copied("org-1", page, unmade=True, pairs=True)
        assert isinstance(batch.persons, PersonCards)
        named = {rid for pair in page.pairs for rid in pair}
        assert len(named) == 4
        assert len(batch.persons) == 10
        async with SQLiteStore.open(tmp_path / "laptop.db") as laptop:
            await laptop.write_copy(batch, checkpoint=("copy.resume", page.records[-1][0]))
            assert len(await laptop.person_pairs()) == 2
        assert set(batch.persons._cards) == named

    asyncio.run(run())


def _strangers(n: int) -> list[tuple[Record, str]]:
    found = []
    for i in range(n):
        record = Record.create(replica="desk-a", record_id=f"s-{i}")
        with record.batch():
            record.set("name", f"Person{i} Stranger{i}", author="dr.a")
            record.set("birthDate", f"19{50 + i}-01-0{1 + i % 9}", author="dr.a")
        found.append((record, "org-1"))
    return found


def test_card_bytes_untouched_by_reading() -> None:
    data = json.dumps({"v": 1, "id": "a", "names": [["awa", "ndiaye"]]}).encode()
    cards = PersonCards.read([("a", data)])
    assert cards.data["a"] is data


def test_cards_made_without_read_are_an_empty_mapping() -> None:
    """A ``PersonCards()`` made by hand (it is public) holds no card, as a mapping."""
    cards = PersonCards()
    assert len(cards) == 0
    assert "rec-1" not in cards
    assert list(cards) == []
    assert dict(cards.data) == {}
    with pytest.raises(KeyError):
        cards["rec-1"]


def test_a_whole_name_in_one_word_keys_alike_in_a_copy() -> None:
    """Found at a merge: a first copy's quick keys of a two-word name left out the key a
    name written without spaces ("王小明") pairs with itself, so a laptop that copied the
    card did not find the same person registered with day and month swapped."""
    card = PersonCard(record_id="a", names=(("ndiaye", "王小明"),), birth_dates=("1990-04-12",))
    read = PersonCards.read([(card.record_id, card.to_bytes())])
    assert "y:1990|王小明|王小明" in read.row_keys_of(["a"])[0]
    assert list(read.row_keys_of(["a"])[0]) == list(read.row_keys("a"))
