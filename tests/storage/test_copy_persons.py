"""A first copy's person cards, stored in bulk (``write_copy``: the cards as the server
sent them, one blocking index per batch) leave exactly the cards and pairs that
storing the records one by one leaves (issue 18, "first copy near the limit").

Generated patients include near-duplicates (the same person typed again with a slip,
an identifier or a phone in common), link decisions between them (same person, two
people, undone, and decisions in conflict), and records of two organisations.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caresync import Record
from caresync.exceptions import InvalidInputError
from caresync.records.crdt import state_vector_of
from caresync.records.persons import (
    DIFFERENT_PEOPLE,
    SAME_PERSON,
    UNLINKED,
    PersonCard,
    _plain_card,
    _typed_card,
    link_path,
    person_card,
)
from caresync.storage import IncomingUpdate, MemoryStore, SQLiteStore, Store
from caresync.storage.base import CopiedRecords
from caresync.testing.store_data import oracle

_GIVEN = ["awa", "moussa", "fatou", "aissatou", "mamadou", "ines"]
_FAMILY = ["ndiaye", "diallo", "ba", "moreau", "sarr"]
_BIRTHS = ["1990-04-12", "1990-12-04", "1990-04-13", "1991-04-12", "1990", "1985-07-01"]


@st.composite
def _slipped(draw: st.DrawFn, token: str) -> str:
    """A token as typed again: the same, or one letter changed, dropped or doubled."""
    slip = draw(st.sampled_from(["none", "none", "change", "drop", "double"]))
    at = draw(st.integers(0, len(token) - 1))
    if slip == "change":
        return token[:at] + draw(st.sampled_from("aeiouy")) + token[at + 1 :]
    if slip == "drop" and len(token) > 2:
        return token[:at] + token[at + 1 :]
    if slip == "double":
        return token[:at] + token[at] + token[at:]
    return token


@st.composite
def _person(draw: st.DrawFn) -> dict[str, object]:
    """Identifying fields of one person (some left out)."""
    fields: dict[str, object] = {
        "name": f"{draw(st.sampled_from(_GIVEN))} {draw(st.sampled_from(_FAMILY))}",
        "birthDate": draw(st.sampled_from(_BIRTHS)),
    }
    if draw(st.booleans()):
        fields["gender"] = draw(st.sampled_from(["female", "male"]))
    if draw(st.integers(0, 4)) == 0:
        fields["identifiers/nid"] = draw(st.sampled_from(["SN1990", "SN2001", "SN3003"]))
    if draw(st.integers(0, 4)) == 0:
        fields["phone"] = draw(st.sampled_from(["77 123 45 67", "+221 77 123 45 67"]))
    return fields


@st.composite
def _again(draw: st.DrawFn, fields: dict[str, object]) -> dict[str, object]:
    """The same person registered a second time, maybe with a slip in the name."""
    name = str(fields["name"])
    tokens = [draw(_slipped(token)) for token in name.split()]
    return {**fields, "name": " ".join(tokens)}


@st.composite
def clinics(draw: st.DrawFn) -> list[tuple[Record, str]]:
    """Records (each with its organisation) of people, about a third registered twice,
    with link decisions between some of them."""
    people: list[dict[str, object]] = []
    for _ in range(draw(st.integers(2, 24))):
        if people and draw(st.integers(0, 2)) == 0:
            people.append(draw(_again(draw(st.sampled_from(people)))))
        else:
            people.append(draw(_person()))
    records = []
    for fields in people:
        record = Record.create(replica=draw(st.sampled_from(["laptop-a", "laptop-b"])))
        with record.batch():
            for path, value in fields.items():
                record.set(path, value, author="dr.a")  # type: ignore[arg-type]
        records.append(record)
    for _ in range(draw(st.integers(0, 4))):
        a, b = draw(st.sampled_from(records)), draw(st.sampled_from(records))
        if a is b:
            continue
        decision = draw(st.sampled_from([SAME_PERSON, DIFFERENT_PEOPLE, UNLINKED]))
        a.set(link_path(b.record_id), decision, author="dr.a")
        if draw(st.integers(0, 3)) == 0:  # a concurrent other decision: contested
            other = Record.from_update(a.record_id, a.update_since(), replica="laptop-z")
            other.set(link_path(b.record_id), SAME_PERSON, author="dr.b")
            a.apply_update(other.update_since(a.state_vector()))
    orgs = draw(st.lists(st.sampled_from(["org-1", "org-1", "org-2"]), min_size=len(records)))
    return list(zip(records, orgs, strict=False))


def _batches(
    records: Sequence[tuple[Record, str]], size: int
) -> list[tuple[str, list[tuple[Record, PersonCard, bytes]]]]:
    """The copy's batches as a server sends them: one organisation per laptop, records
    in id order, each card as bytes (the laptop parses them)."""
    by_org: dict[str, list[tuple[Record, PersonCard, bytes]]] = {}
    for record, org in sorted(records, key=lambda ro: ro[0].record_id):
        card = person_card(record)
        by_org.setdefault(org, []).append((record, card, card.to_bytes()))
    out = []
    for org, items in by_org.items():
        out.extend((org, items[i : i + size]) for i in range(0, len(items), size))
    return out


async def _in_bulk(store: Store, records: Sequence[tuple[Record, str]], size: int) -> None:
    for org, batch in _batches(records, size):
        updates = [record.update_since() for record, _card, _data in batch]
        await store.write_copy(
            CopiedRecords(
                [record.record_id for record, _card, _data in batch],
                updates,
                [state_vector_of(u) for u in updates],
                org,
                {},
                {card.record_id: PersonCard.from_bytes(data) for _r, card, data in batch},
                {card.record_id: data for _r, card, data in batch},
            ),
            checkpoint=("copy.resume", batch[-1][0].record_id),
        )


async def _one_by_one(
    store: Store, records: Sequence[tuple[Record, str]], order: list[int]
) -> None:
    for i in order:
        record, org = records[i]
        await store.write_remote(
            [
                IncomingUpdate(
                    record.record_id, record.update_since(), None, org, person_card(record)
                )
            ]
        )


async def _index(store: Store, ids: list[str]) -> tuple[object, ...]:
    return (
        await store.person_cards(ids),
        await store.person_card_bytes(ids),
        await store.person_pairs(),
        await store.check(),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics(), st.integers(1, 9), st.randoms(use_true_random=False))
def test_a_bulk_copy_leaves_the_cards_and_pairs_of_one_by_one_writes(
    records: list[tuple[Record, str]], size: int, rng: object
) -> None:
    order = list(range(len(records)))
    rng.shuffle(order)  # type: ignore[attr-defined]
    ids = sorted(record.record_id for record, _org in records)

    async def run(folder: Path) -> None:
        found = []
        async with SQLiteStore.open(folder / "bulk.db") as bulk:
            await _in_bulk(bulk, records, size)
            found.append(await _index(bulk, ids))
        async with SQLiteStore.open(folder / "each.db") as each:
            await _one_by_one(each, records, order)
            found.append(await _index(each, ids))
        memory = await MemoryStore.open()
        await _in_bulk(memory, records, size)
        found.append(await _index(memory, ids))
        await memory.close()
        assert found[0] == found[1] == found[2]
        cards, card_bytes, pairs, damage = found[0]
        assert damage == []
        # Every pair the final cards make, found once: the brute-force oracle.
        assert pairs == oracle(
            {record.record_id: (org, person_card(record)) for record, org in records}
        )
        assert card_bytes == {rid: card.to_bytes() for rid, card in cards.items()}  # type: ignore[union-attr]

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))


async def test_a_copied_card_is_stored_as_the_server_sent_it(tmp_path: Path) -> None:
    """The bytes as they came, not the card written out again (here a server that
    orders its keys otherwise: the same card)."""
    record = Record.create(replica="server")
    record.set("name", "Awa Ndiaye", author="dr.a")
    record.set("birthDate", "1990-04-12", author="dr.a")
    card = person_card(record)
    sent = json.dumps(dict(reversed(json.loads(card.to_bytes()).items()))).encode()
    assert sent != card.to_bytes()
    assert PersonCard.from_bytes(sent) == card
    update = record.update_since()
    async with SQLiteStore.open(tmp_path / "laptop.db") as store:
        await store.write_copy(
            CopiedRecords(
                [record.record_id],
                [update],
                [state_vector_of(update)],
                "org-1",
                {},
                {record.record_id: card},
                {record.record_id: sent},
            )
        )
        assert await store.person_card_bytes([record.record_id]) == {record.record_id: sent}
        assert await store.person_cards([record.record_id]) == {record.record_id: card}
        assert await store.check() == []


@pytest.mark.parametrize(
    ("persons", "sent"),
    [
        ({}, {"rec-1": b"{}"}),  # bytes of a record that has no card in the batch
        ("card", {"rec-1": "not bytes"}),
    ],
)
def test_card_bytes_must_be_bytes_of_a_card_in_the_batch(persons: object, sent: object) -> None:
    record = Record.create(replica="server", record_id="rec-1")
    record.set("name", "Awa Ndiaye", author="dr.a")
    update = record.update_since()
    cards = {"rec-1": person_card(record)} if persons == "card" else {}
    with pytest.raises(InvalidInputError, match="card bytes"):
        CopiedRecords(["rec-1"], [update], [state_vector_of(update)], None, {}, cards, sent)  # type: ignore[arg-type]


# ------------------------------------------------------- the quick pass of a card's bytes

_odd = st.one_of(
    st.text(max_size=4),
    st.just(""),
    st.just("x" * 1025),
    st.integers(-1, 2**64),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.text(max_size=3), st.just("")), max_size=3),
    st.just(["a"] * 65),
)


@st.composite
def _card_objects(draw: st.DrawFn) -> dict[str, object]:
    """A card as parsed bytes hold it, with identifiers and a phone, then one value
    somewhere in it (a field, an item, or an item's part) replaced by an odd one."""
    fields = draw(_person())
    fields["identifiers/nid"] = draw(st.sampled_from(["SN1990", "X"]))
    record = Record.create(replica="laptop-a")
    with record.batch():
        for path, value in fields.items():
            record.set(path, value, author="dr.a")  # type: ignore[arg-type]
    raw: dict[str, object] = json.loads(person_card(record).to_bytes())
    raw["phones"] = ["771234567"]
    key = draw(st.sampled_from([*sorted(raw), "links", "other"]))
    where = draw(st.sampled_from(["field", "item", "part"]))
    value = raw.get(key)
    if where == "item" and isinstance(value, list) and value:
        value[draw(st.integers(0, len(value) - 1))] = draw(_odd)
    elif where == "part" and isinstance(value, list) and value and isinstance(value[0], list):
        part = value[0]
        if part:
            part[draw(st.integers(0, len(part) - 1))] = draw(_odd)
    else:
        raw[key] = draw(_odd)
    return raw


@settings(max_examples=2000, deadline=None)
@given(_card_objects())
def test_the_quick_pass_accepts_only_what_the_careful_one_does_and_reads_it_alike(
    raw: dict[str, object],
) -> None:
    raw = json.loads(json.dumps(raw))  # as parsed bytes hold it
    if raw.get("v") != 1:
        return  # refused before either pass
    quick = _plain_card(PersonCard, raw)
    try:
        careful = PersonCard._checked(raw)
    except InvalidInputError:
        assert quick is None
        return
    assert quick is None or quick == careful


@settings(max_examples=300, deadline=None)
@given(clinics())
def test_cards_as_written_take_the_quick_pass(records: list[tuple[Record, str]]) -> None:
    for record, _org in records:
        card = person_card(record)
        raw = json.loads(card.to_bytes())
        if card.links:
            assert _plain_card(PersonCard, raw) is None  # decisions: the careful pass
        else:
            assert _plain_card(PersonCard, raw) == card
        assert PersonCard.from_bytes(card.to_bytes()) == card


def _read_as_before(data: bytes) -> PersonCard | None:
    """The card the passes before the typed one give for ``data``; None if refused."""
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("v") != 1:
        return None
    try:
        return _plain_card(PersonCard, raw) or PersonCard._checked(raw)
    except InvalidInputError:
        return None


_spellings = st.sampled_from(
    [
        lambda raw: json.dumps(raw, separators=(",", ":"), ensure_ascii=False),
        lambda raw: json.dumps(raw),  # spaces, and non-ASCII as escapes
        lambda raw: json.dumps(raw, indent=1),
        # A key given twice: the first value odd, the last as written (or the reverse).
        lambda raw: json.dumps(raw)[:-1] + ', "id": 7}',
        lambda raw: '{"id": 7, ' + json.dumps(raw)[1:],
        lambda raw: json.dumps(raw)[:-1] + ', "names": [["ann"]]}',
    ]
)


@settings(max_examples=2000, deadline=None)
@given(_card_objects(), _spellings)
def test_the_typed_pass_accepts_only_what_the_others_do_and_reads_it_alike(
    raw: dict[str, object], spell: object
) -> None:
    data = spell(raw).encode()  # type: ignore[operator]
    typed = _typed_card(data)
    before = _read_as_before(data)
    if before is None:
        assert typed is None
    else:
        assert typed is None or typed == before
    # And from_bytes, whichever pass reads it, gives what the passes before gave.
    try:
        card = PersonCard.from_bytes(data)
    except InvalidInputError:
        assert before is None
    else:
        assert card == before


@settings(max_examples=300, deadline=None)
@given(clinics())
def test_cards_as_written_take_the_typed_pass(records: list[tuple[Record, str]]) -> None:
    for record, _org in records:
        card = person_card(record)
        if not card.links:
            assert _typed_card(card.to_bytes()) == card


@pytest.mark.parametrize(
    "data",
    [
        b'{"v":1,"id":"a","names":[["\\ud800"]]}',  # a lone surrogate: refused
        b'{"v":1,"id":"a","display":"\\ud83d\\ude00"}',  # a pair: one character
        b'{"v":2,"id":"a"}',
        b'{"v":true,"id":"a"}',
        b'{"v":1.0,"id":"a"}',
        b'{"v":1,"id":"a","reg":["x","y",1,9223372036854775808,"r"]}',
        b'{"v":1,"id":"a","reg":["x","y",1,2,"r"]} ',
        b'{"v":1,"id":"a","links":[["b","same"]]}',
        b'{"v":1,"id":""}',
        b'{"v":1,"id":"a","other":1}',
        b'\xef\xbb\xbf{"v":1,"id":"a"}',
        b'{"v":1,"id":"a","phones":[' + b",".join([b'"1"'] * 65) + b"]}",
        b'{"v":1,"id":"' + "\U0001f600".encode() * 1024 + b'"}',  # 1,024 characters: taken
        b'{"v":1,"id":"a","display":NaN}',
    ],
)
def test_odd_bytes_read_as_before(data: bytes) -> None:
    before = _read_as_before(data)
    typed = _typed_card(data)
    assert typed is None or typed == before
    try:
        card = PersonCard.from_bytes(data)
    except InvalidInputError:
        assert before is None or b"\\ud800" in data
    else:
        assert card == before


@pytest.mark.parametrize(
    "data",
    [
        b'{"v":1,"id":"a\tb"}',  # a raw control character: not JSON
        b'{"v":1,"id":"a\x00b"}',
        b'{"v":1,"id":"a\xed\xa0\x80"}',  # a surrogate in UTF-8: json.loads passes it
        b'{"v":1,"id":"\xed\xa0\xbd\xed\xb8\x80"}',  # a pair in CESU-8, likewise
        b'{"v":1,"id":"a\xc0\xaf"}',  # overlong
        b'{"v":1,"id":"a\xf4\x90\x80\x80"}',  # beyond U+10FFFF
        b'{"v":1,"id":"a","reg":["x","y",1.0,2,"r"]}',  # a float where an int goes
        b'{"v":1,"id":"a","reg":["x","y",1e2,2,"r"]}',
        b'{"v":1,"id":"a","reg":["x","y",true,2,"r"]}',
        b'{"v":1,"id":"a","reg":["x","y",-1,2,"r"]}',
        b'{"v":1,"id":"a","reg":["x","y",01,2,"r"]}',
        b'{"v":1,"id":"a","reg":["x","y",Infinity,2,"r"]}',
        b'{"v":1,"v":2,"id":"a"}',  # a key twice: the last counts
        b'{"v":1,\x0c"id":"a"}',  # whitespace JSON does not know
        b'{"v":1,"id":"a"}\x00',  # trailing data
        b'{"v":1,"id":"a",}',
        b'{"v":1,"id":"a","birth":["x",]}',
        b"{'v':1,'id':'a'}",
        b'{"v":1,/*x*/"id":"a"}',
        b'{"v":' + b"1" * 5000 + b',"id":"a"}',
        b'{"v":1,"id":"a","names":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"",
    ],
)
def test_bytes_refused_before_are_refused_by_the_typed_pass_too(data: bytes) -> None:
    assert _typed_card(data) is None
    with pytest.raises(InvalidInputError):
        PersonCard.from_bytes(data)
