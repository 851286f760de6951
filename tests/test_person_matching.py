"""The person index's pure part: cards read from records, the match score, link decisions.

A pair must be a function of the two cards only (symmetric, the same on every
replica); cards travel in a first copy, so their bytes are checked as untrusted.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caresync.conflicts.duplicates import linked_group, pair_conflicts, paired_record
from caresync.conflicts.model import Severity
from caresync.exceptions import InvalidInputError
from caresync.records import Record
from caresync.records.persons import (
    DIFFERENT_PEOPLE,
    MATCH_THRESHOLD,
    SAME_PERSON,
    UNLINKED,
    PairState,
    PersonCard,
    PersonPair,
    link_path,
    match_score,
    pair_of,
    person_card,
)


def patient(record_id: str = "", **fields: object) -> Record:
    record = Record.create(replica="laptop-1", record_id=record_id or None)
    with record.batch():
        for path, value in fields.items():
            record.set(path.replace("__", "/"), value, author="dr.a")  # type: ignore[arg-type]
    return record


def card(**fields: object) -> PersonCard:
    return person_card(patient(**fields))


AWA = {"name": "Awa Ndiaye", "birthDate": "1990-04-12", "sex": "female"}


def test_the_same_name_and_birth_date_is_a_possible_duplicate() -> None:
    pair = pair_of(card(**AWA), card(**AWA))
    assert pair is not None
    assert pair.state is PairState.POSSIBLE
    assert pair.score >= MATCH_THRESHOLD
    assert pair.reasons == ("same birth date", "same name")


@pytest.mark.parametrize(
    "other",
    [
        {"name": "AWA N'DIAYE", "birthDate": "1990-04-12"},  # case, apostrophe
        {"name": "Ndiaye, Awa", "birthDate": "1990-04-12"},  # order, punctuation
        {"name": "Awa Ndiay", "birthDate": "1990-04-12", "sex": "F"},  # one letter
        {"name": "Dr. Awa Ndiaye", "birthDate": "1990-04-12"},  # a title
        {"name": {"given": ["Awa"], "family": "Ndiaye"}, "birthDate": "1990-04-12"},
        {"name": "Awa Ndiaye", "birthDate": "1990-12-04", "phone": "+221 77 123 45 67"},
        {"name": "A. Ndiaye", "identifiers": {"national-id": "SN-1990-0412-77"}},
    ],
)
def test_what_a_clerk_writes_differently_still_matches(other: dict[str, object]) -> None:
    first = card(**AWA, phone="77 123 45 67", identifiers={"national-id": "sn1990041277"})
    pair = pair_of(first, card(**other))
    assert pair is not None, match_score(first, card(**other))
    assert pair.state is PairState.POSSIBLE


@pytest.mark.parametrize(
    "other",
    [
        {"name": "Moussa Ndiaye", "birthDate": "1990-04-12", "sex": "male"},  # a twin brother
        {"name": "Awa Ndiaye", "birthDate": "2015-06-30"},  # a namesake, 25 years apart
        {"name": "Fatou Ba", "birthDate": "1990-04-12"},
        {"name": "Awa Ndiaye", "identifiers": {"national-id": "SN-2001-9999-01"}},
    ],
)
def test_different_people_who_look_alike_are_not_flagged(other: dict[str, object]) -> None:
    first = card(**AWA, identifiers={"national-id": "SN-1990-0412-77"})
    assert pair_of(first, card(**other)) is None, match_score(first, card(**other))


def test_an_identifier_alone_matches_and_a_different_one_vetoes() -> None:
    ids = {"identifiers": [{"system": "passport", "value": "A1234567"}]}
    pair = pair_of(card(name="Awa Ba", **ids), card(name="Aoua Bah", **ids))
    assert pair is not None
    assert "same passport number" in pair.reasons
    other = {"identifiers": [{"system": "passport", "value": "B7654321"}]}
    assert pair_of(card(**AWA, **ids), card(**AWA, **other)) is None


def test_placeholders_identify_nobody() -> None:
    blank = card(identifiers={"national-id": "0000000"}, phone="000 000 0000")
    assert not blank.identifiers
    assert not blank.phones
    assert pair_of(blank, card(identifiers={"national-id": "0000000"})) is None


def test_cards_meet_by_their_keys_only_when_worth_comparing() -> None:
    a, b = card(**AWA), card(name="Awa Ndiay", birthDate="1990-04-12")
    assert a.blocking_keys() & b.blocking_keys()  # a misspelt name, the same birth date
    swapped = card(name="Awa Ndiaye", birthDate="1990-12-04")
    assert a.blocking_keys() & swapped.blocking_keys()  # the same name, the same year
    stranger = card(name="Fatou Ba", birthDate="1971-01-01")
    assert not a.blocking_keys() & stranger.blocking_keys()


@pytest.mark.parametrize(
    ("written", "other"),
    [
        ("12/04/1990", "12/04/1990"),  # both typed day first: the same text
        ("12/04/1990", "1990-04-12"),  # a clerk's day-first date, an ISO one from FHIR
        ("12.04.1990", "1990-04-12"),
        ("12-4-1990", "1990-04-12"),
        ("1990/04/12", "1990-04-12"),
        ("1990-4-12", "1990-04-12"),
        ("19900412", "1990-04-12"),
        ("04/25/1990", "1990-04-25"),  # month first, as only it can be read
    ],
)
def test_a_birth_date_written_another_way_is_the_same_date(written: str, other: str) -> None:
    # Read as its digits, "12/04/1990" never equalled "1990-04-12", nor itself
    # ("12041990" was a birth date "alike as far as both go"): the same person,
    # registered twice with the same name and date, was no possible duplicate.
    first = card(name="Awa Ndiaye", birthDate=written)
    second = card(name="Awa Ndiaye", birthDate=other)
    pair = pair_of(first, second)
    assert pair is not None, match_score(first, second)
    assert "same birth date" in pair.reasons
    assert first.blocking_keys() & second.blocking_keys() - {f"r:{first.record_id}"}


@pytest.mark.parametrize(
    "written",
    [
        "12 Apr 1990",
        "12-Apr-1990",  # as many hospital systems print it
        "12 April 1990",
        "April 12, 1990",
        "Apr 12 1990",
        "12 avril 1990",
        "12 avr. 1990",
    ],
)
def test_a_birth_date_with_its_month_in_words_is_the_same_date(written: str) -> None:
    # Read as its digits ("121990"), "12 Apr 1990" was a "different birth date" (-4)
    # from 1990-04-12, and only "alike as far as both go" with itself.
    assert card(birthDate=written).birth_dates == ("1990-04-12",)
    first = card(name="Awa Ndiaye", birthDate=written)
    pair = pair_of(first, card(**AWA))
    assert pair is not None, match_score(first, card(**AWA))
    assert "same birth date" in pair.reasons


def test_a_birth_date_with_another_month_in_words_is_another_date() -> None:
    # "12 Apr 1990" and "12 Nov 1990" were both "121990": a birth year alike.
    april, november = card(birthDate="12 Apr 1990"), card(birthDate="12 Nov 1990")
    assert match_score(april, november)[1] == ("different birth date",)
    assert card(birthDate="12 Foo 1990").birth_dates == ("121990",)  # no month: as before


def test_a_day_first_date_of_another_person_is_still_another_date() -> None:
    # Read as a date, not as a number: 03/04/1990 is 3 April, not 4 March, and
    # a date that cannot be a day of a year is read as before (its digits).
    assert card(birthDate="03/04/1990").birth_dates == ("1990-04-03",)
    assert card(birthDate="31/02/1990").birth_dates == ("31021990",)
    pair = pair_of(card(name="Awa Ndiaye", birthDate="03/04/1990"), card(**AWA))
    assert pair is None or "same birth date" not in pair.reasons


@pytest.mark.parametrize(
    ("written", "other"),
    [
        ("Søren Ødegård", "Soren Odegard"),  # letters NFKD does not decompose
        ("Łukasz Żółć", "Lukasz Zolc"),
        ("Đặng Văn An", "Dang Van An"),
        ("Æsa Ba", "Aesa Ba"),
        ("محمد ولد أحمد", "محمد ولد أحمد"),  # a name in Arabic script, twice
        ("Иван Петров", "Иван Петров"),  # in Cyrillic
        ("አበበ በቀለ", "አበበ በቀለ"),  # in Ge'ez (Amharic)
    ],
)
def test_a_name_in_any_script_identifies_its_person(written: str, other: str) -> None:
    # Folded to [a-z0-9], letters outside ASCII that NFKD does not decompose were
    # dropped: "Søren" read as "s" and "ren", an Arabic or Cyrillic name as no name at
    # all, so the same person registered twice with the same name and birth date
    # scored the birth date alone (4) and was never a possible duplicate.
    first = card(name=written, birthDate="1990-04-12")
    second = card(name=other, birthDate="1990-04-12")
    assert first.names
    pair = pair_of(first, second)
    assert pair is not None, match_score(first, second)
    assert "same name" in pair.reasons
    assert first.blocking_keys() & second.blocking_keys() - {f"r:{first.record_id}"}
    stranger = card(name="Fatou Ba", birthDate="1990-04-12")
    assert pair_of(first, stranger) is None


@pytest.mark.parametrize(
    ("written", "other"),
    [
        ("王小明", "王小明"),  # Chinese, written without spaces
        ("王 小明", "王小明"),  # the same name, one clerk spaced it
        ("山田太郎", "山田 太郎"),  # Japanese
        ("山田太郎", {"family": "山田", "given": ["太郎"]}),  # parts, given first in the data
        ("김민준", "김민준"),  # Korean
    ],
)
def test_a_name_written_without_spaces_identifies_its_person(
    written: str, other: str | dict[str, object]
) -> None:
    # Names in Han, kana or Hangul are written without spaces: the whole name was one
    # token, scored as a name of one word ("Awa" alone, at most 2), so the same person
    # registered twice with the same name and birth date scored 6 and was never a
    # possible duplicate; "山田太郎" against "山田 太郎" was a "different name".
    first = card(name=written, birthDate="1990-04-12")
    second = card(name=other, birthDate="1990-04-12")
    pair = pair_of(first, second)
    assert pair is not None, match_score(first, second)
    assert "same name" in pair.reasons
    assert first.blocking_keys() & second.blocking_keys() - {f"r:{first.record_id}"}
    # Day and month swapped, the same name and sex: compared (a year key) and a pair.
    swapped = card(name=written, birthDate="1990-12-04", sex="female")
    again = card(name=other, birthDate="1990-04-12", sex="female")
    assert swapped.blocking_keys() & again.blocking_keys() - {f"r:{swapped.record_id}"}
    assert pair_of(swapped, again) is not None


@pytest.mark.parametrize(
    ("one", "another"),
    [
        ("王小明", "王小红"),  # one character of the given name differs
        ("王小明", "李小明"),  # another family
        ("田中太郎", "中田太郎"),  # Tanaka and Nakata: the same characters, in another order
        ("山田太郎", "山田次郎"),
    ],
)
def test_names_without_spaces_of_different_people_are_not_the_same_name(
    one: str, another: str
) -> None:
    first = card(name=one, birthDate="1990-04-12")
    second = card(name=another, birthDate="1990-04-12")
    assert pair_of(first, second) is None, match_score(first, second)
    assert "same name" not in match_score(first, second)[1]


def test_a_field_in_conflict_contributes_every_value() -> None:
    record = patient(name="Awa Ndiaye")
    fork = Record.from_update(record.record_id, record.update_since(), replica="laptop-2")
    record.set("birthDate", "1990-04-12", author="dr.a")
    fork.set("birthDate", "1990-12-04", author="dr.b")
    record.apply_update(fork.update_since())
    both = person_card(record)
    assert set(both.birth_dates) == {"1990-04-12", "1990-12-04"}
    assert pair_of(both, card(name="Awa Ndiaye", birthDate="1990-12-04")) is not None


# ----------------------------------------------------------------- decisions


def test_a_decision_in_either_record_decides_the_pair() -> None:
    a, b = patient(**AWA), patient(name="Someone Else", birthDate="1950-01-01")
    a.set(link_path(b.record_id), SAME_PERSON, author="dr.a")
    pair = pair_of(person_card(a), person_card(b))
    assert pair is not None
    assert pair.state is PairState.LINKED
    assert person_card(b).record_id in {k[2:] for k in person_card(a).blocking_keys()}
    b.set(link_path(a.record_id), DIFFERENT_PEOPLE, author="dr.b")
    disputed = pair_of(person_card(a), person_card(b))
    assert disputed is not None
    assert disputed.state is PairState.DISPUTED


def test_different_people_ends_the_finding_and_unlinked_brings_it_back() -> None:
    a, b = patient(**AWA), patient(**AWA)
    a.set(link_path(b.record_id), DIFFERENT_PEOPLE, author="dr.a")
    b.set(link_path(a.record_id), DIFFERENT_PEOPLE, author="dr.a")
    assert pair_of(person_card(a), person_card(b)) is None
    a.set(link_path(b.record_id), UNLINKED, author="dr.a")
    b.set(link_path(a.record_id), UNLINKED, author="dr.a")
    again = pair_of(person_card(a), person_card(b))
    assert again is not None
    assert again.state is PairState.POSSIBLE


def test_concurrent_decisions_make_a_disputed_pair() -> None:
    a, b = patient(**AWA), patient(**AWA)
    fork = Record.from_update(a.record_id, a.update_since(), replica="laptop-2")
    a.set(link_path(b.record_id), SAME_PERSON, author="dr.a")
    fork.set(link_path(b.record_id), DIFFERENT_PEOPLE, author="dr.b")
    a.apply_update(fork.update_since())
    assert person_card(a).decision_about(b.record_id) == "contested"
    pair = pair_of(person_card(a), person_card(b))
    assert pair is not None
    assert pair.state is PairState.DISPUTED
    findings = pair_conflicts(pair)
    assert [f.severity for f in findings] == [Severity.BLOCK, Severity.BLOCK]


def test_a_pair_is_one_finding_on_both_records_naming_the_other() -> None:
    a, b = card(**AWA), card(**AWA)
    pair = pair_of(a, b)
    assert pair is not None
    on_a, on_b = sorted(pair_conflicts(pair), key=lambda c: c.record_id != a.record_id)
    assert on_a.id == on_b.id == pair.id
    assert on_a.record_id == a.record_id
    assert on_b.record_id == b.record_id
    assert b.record_id in on_a.message
    assert a.record_id in on_b.message
    assert paired_record(on_a) == b.record_id
    assert on_a.candidates[0].author == "dr.a"  # who registered the other chart
    assert pair_conflicts(pair_of(a, b) or pair) == pair_conflicts(pair)  # deterministic


def test_a_link_value_that_is_no_decision_is_left_out_of_the_card() -> None:
    """Any value may be written at a link path (the schema and the server's admission
    take it): one that is not a decision's word decides nothing, a list or a map too
    (it raised TypeError, unhashable, in every write and intake of the record)."""
    a, b = patient(**AWA), patient(**AWA)
    for value in (["same-person"], {"decision": "same-person"}, 7, "maybe"):
        a.set(link_path(b.record_id), value, author="dr.a")  # type: ignore[arg-type]
        assert person_card(a).links == ()
    a.set(link_path(b.record_id), SAME_PERSON, author="dr.a")
    assert person_card(a).decision_about(b.record_id) == SAME_PERSON


def test_link_paths_refuse_what_is_not_a_record_id() -> None:
    for bad in ("", "a/b", 7):
        with pytest.raises(InvalidInputError):
            link_path(bad)  # type: ignore[arg-type]


def test_linked_group_follows_links_through_other_records() -> None:
    a, b, c, d = (patient(**AWA) for _ in range(4))
    a.set(link_path(b.record_id), SAME_PERSON, author="dr.a")
    b.set(link_path(c.record_id), SAME_PERSON, author="dr.a")
    cards = {r.record_id: person_card(r) for r in (a, b, c, d)}
    pairs = [
        p
        for x in cards.values()
        for y in cards.values()
        if x.record_id < y.record_id and (p := pair_of(x, y)) is not None
    ]
    assert linked_group(a.record_id, pairs) == sorted([b.record_id, c.record_id])
    assert linked_group(d.record_id, pairs) == []


# ----------------------------------------------------------------- bytes


def test_cards_and_pairs_survive_their_bytes() -> None:
    a = card(**AWA, phone="77 123 45 67", identifiers={"nid": "SN1990"})
    assert PersonCard.from_bytes(a.to_bytes()) == a
    pair = pair_of(a, card(**AWA))
    assert pair is not None
    assert PersonPair.from_bytes(pair.to_bytes()) == pair


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"v": 99, "id": "r"}',
        b'{"v": 1}',
        b'{"v": 1, "id": "r", "names": "awa"}',
        b'{"v": 1, "id": "r", "links": [["x", "married"]]}',
        b'{"v": 1, "id": "r", "reg": ["a", "b", -1, 0, "rev"]}',
        b'{"v": 1, "id": "r", "birth": [' + b",".join([b'"1"'] * 100) + b"]}",
    ],
)
def test_bad_card_bytes_are_refused_with_a_typed_error(data: bytes) -> None:
    with pytest.raises(InvalidInputError, match="person card"):
        PersonCard.from_bytes(data)


# ----------------------------------------------------------------- properties

_names = st.sampled_from(["Awa Ndiaye", "Awa N'Diaye", "Awa Ndiay", "Moussa Ndiaye", "Fatou Ba"])
_births = st.sampled_from(["1990-04-12", "1990-12-04", "1990-04-13", "1991", ""])
_sexes = st.sampled_from(["female", "male", "F", ""])
_phones = st.sampled_from(["77 123 45 67", "+221 77 123 45 67", "76 000 11 22", ""])


@st.composite
def cards(draw: st.DrawFn) -> PersonCard:
    fields = {
        "name": draw(_names),
        "birthDate": draw(_births),
        "sex": draw(_sexes),
        "phone": draw(_phones),
    }
    return card(**{k: v for k, v in fields.items() if v})


_TOKENS = ["awa", "ndiaye", "moussa", "fatou", "ba", "aissatou", "diallo", "mamadou"]
_TOKENS += ["王小明", "山田", "太郎", "김민준"]  # names written without spaces, and parts
_LETTERS = "adiouy"


@st.composite
def _slipped(draw: st.DrawFn, token: str) -> str:
    """A token as a person might type it: as it is, or with one slip of the keyboard."""
    slip = draw(st.sampled_from(["none", "none", "change", "drop", "add", "swap"]))
    at = draw(st.integers(0, len(token) - 1))
    letter = draw(st.sampled_from(_LETTERS))
    if slip == "change":
        return token[:at] + letter + token[at + 1 :]
    if slip == "drop" and len(token) > 2:
        return token[:at] + token[at + 1 :]
    if slip == "add":
        return token[:at] + letter + token[at:]
    if slip == "swap" and at + 1 < len(token):
        return token[:at] + token[at + 1] + token[at] + token[at + 2 :]
    return token


@st.composite
def _typed_names(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=4, unique=True))
    return " ".join(draw(_slipped(t)) for t in tokens)


@st.composite
def _typed_births(draw: st.DrawFn) -> str:
    day, month = draw(st.integers(1, 28)), draw(st.integers(1, 12))
    birth = f"{draw(st.sampled_from(['1990', '1991', '1909']))}-{month:02d}-{day:02d}"
    slip = draw(st.sampled_from(["none", "swap", "digit", "year", "month", "empty"]))
    if slip == "swap" and day <= 12:
        return f"{birth[:4]}-{day:02d}-{month:02d}"
    if slip == "digit":
        at = draw(st.sampled_from([0, 1, 2, 3, 5, 6, 8, 9]))
        return birth[:at] + str(draw(st.integers(0, 9))) + birth[at + 1 :]
    return {"year": birth[:4], "month": birth[:7], "empty": ""}.get(slip, birth)


@st.composite
def typed_cards(draw: st.DrawFn) -> PersonCard:
    """Cards as people register them: names and birth dates with typing slips."""
    names = draw(st.lists(_typed_names(), min_size=1, max_size=2))
    fields = {
        "name": names[0] if len(names) == 1 else names,
        "birthDate": draw(_typed_births()),
        "sex": draw(_sexes),
        "phone": draw(_phones),
    }
    return card(**{k: v for k, v in fields.items() if v})


@settings(max_examples=1000, deadline=None)
@given(typed_cards(), typed_cards())
def test_every_possible_duplicate_shares_a_blocking_key(x: PersonCard, y: PersonCard) -> None:
    pair = pair_of(x, y)
    if pair is not None and pair.state is PairState.POSSIBLE:
        assert x.blocking_keys() & y.blocking_keys(), (
            "a possible duplicate the index would never compare"
        )


@settings(max_examples=200, deadline=None)
@given(cards(), cards())
def test_a_pair_depends_on_the_two_cards_only(x: PersonCard, y: PersonCard) -> None:
    assert match_score(x, y) == match_score(y, x)
    assert pair_of(x, y) == pair_of(y, x)
    again = pair_of(PersonCard.from_bytes(x.to_bytes()), PersonCard.from_bytes(y.to_bytes()))
    assert again == pair_of(x, y)
    pair = pair_of(x, y)
    if pair is not None and pair.state is PairState.POSSIBLE:
        assert x.blocking_keys() & y.blocking_keys(), (
            "a possible duplicate the index would never compare"
        )


def test_the_card_is_compact_json() -> None:
    data = json.loads(card(**AWA).to_bytes())
    assert data["names"] == [["awa", "ndiaye"]]
    assert data["birth"] == ["1990-04-12"]
    assert data["sex"] == ["female"]


# ----------------------------------------------------------------- keys and bytes, quickly


# Scripts written without spaces between a name's parts (Han, kana, Hangul), as the
# definition names them; a word of them only ("王小明", not "一0") is a whole name.
_UNSPACED_WORD = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003134f]+"
)


def _unspaced(token: str) -> bool:
    return _UNSPACED_WORD.fullmatch(token) is not None


def _keys_as_sets(card: PersonCard) -> frozenset[str]:
    """Blocking keys as the plain sets of their definition (the quick lists must agree)."""
    keys = {f"r:{card.record_id}"}
    keys.update(f"r:{other}" for other, _decision in card.links)
    keys.update(f"i:{system}={value}" for system, value in card.identifiers)
    keys.update(f"p:{phone}" for phone in card.phones)
    tokens = {t for name in card.names for t in name}
    pairs = {(a, b) for name in card.names for a in name for b in name if a < b}
    # A whole name written without spaces in one word pairs with itself.
    pairs |= {(t, t) for name in card.names for t in name if len(t) > 1 and _unspaced(t)}
    for birth in card.birth_dates:
        if len(birth) == 10:
            keys.update(f"d:{birth}|{t[:3]}" for t in tokens)
        keys.update(f"y:{birth[:4]}|{a}|{b}" for a, b in pairs)
    return frozenset(keys)


_token = st.text("abdeiouy|", min_size=1, max_size=6)
_name_token = st.one_of(_token, st.text("王小明", min_size=1, max_size=3))
_any_cards = st.builds(
    PersonCard,
    record_id=st.text("abc-1", min_size=1, max_size=5),
    names=st.lists(st.lists(_name_token, max_size=4).map(tuple), max_size=3).map(tuple),
    birth_dates=st.lists(
        st.sampled_from(["1990-04-12", "1990-04", "1991", "", "1990-04-13"]), max_size=3
    ).map(tuple),
    identifiers=st.lists(st.tuples(st.sampled_from(["", "nid"]), _token), max_size=2).map(tuple),
    phones=st.lists(_token, max_size=2).map(tuple),
    links=st.lists(
        st.tuples(st.text("abc-1", min_size=1, max_size=5), st.just(SAME_PERSON)), max_size=2
    ).map(tuple),
)


@settings(max_examples=1000, deadline=None)
@given(_any_cards)
def test_blocking_keys_are_those_of_their_definition(card: PersonCard) -> None:
    assert card.blocking_keys() == _keys_as_sets(card)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        _any_cards.map(PersonCard.to_bytes),
        st.builds(
            lambda card, before, after: before + card.to_bytes() + after,
            _any_cards,
            st.sampled_from([b"", b" ", b"\xef\xbb\xbf", b"\n"]),
            st.sampled_from([b"", b" ", b"\n", b"x", b"}", b"{}"]),
        ),
        _any_cards.map(lambda c: c.to_bytes().decode().encode("utf-16")),
        _any_cards.map(lambda c: c.to_bytes()[:-1] + b"\xff}"),
        st.binary(max_size=40).map(lambda tail: b'{"' + tail),
    )
)
def test_card_bytes_read_alike_on_the_quick_way_and_by_json_loads(data: bytes) -> None:
    """A card's JSON is read without json.loads' preamble when its bytes start as cards
    do; what it reads, or refuses, is what json.loads would."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        with pytest.raises(InvalidInputError, match="person card"):
            PersonCard.from_bytes(data)
        return
    if not isinstance(raw, dict) or raw.get("v") != 1:
        with pytest.raises(InvalidInputError, match="person card"):
            PersonCard.from_bytes(data)
        return
    try:
        expected = PersonCard._checked(raw)
    except InvalidInputError:
        with pytest.raises(InvalidInputError, match="person card"):
            PersonCard.from_bytes(data)
        return
    assert PersonCard.from_bytes(data) == expected
