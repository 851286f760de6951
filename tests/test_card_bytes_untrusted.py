"""Card bytes off the wire (or out of a hand-edited file) that json.loads takes but no
card of ``PersonCard.to_bytes`` could be: each gets a caresync error, never a Python one
(RecursionError) nor a card that fails later, in the store (UnicodeEncodeError)."""

from __future__ import annotations

import pytest

from caresync.exceptions import InvalidInputError, RemoteProtocolError
from caresync.records.persons import PersonCard, PersonPair
from caresync.replication.checked import card_from_wire

_DEEP = b"[" * 5000 + b"]" * 5000

# A lone surrogate: as a JSON escape (the fast path's UTF-8 text), and as the bytes
# json.loads decodes with "surrogatepass" (the fallback).
_LONE_SURROGATE_CARDS = [
    b'{"v":1,"id":"a","names":[["\\ud800x","bob"]],"birth":["1990-01-01"]}',
    b'{"v":1,"id":"a","phones":["\\uDFFF123456"]}',
    b'{"v":1,"id":"a","names":[["\xed\xa0\x80x","bob"]],"birth":["1990-01-01"]}',
    b'{"v":1,"id":"a","links":[["\\ud800","same-person"]]}',
]


@pytest.mark.parametrize(
    "data",
    [
        b'{"v":1,"id":"a","names":' + _DEEP + b"}",  # fast path's raw_decode
        b' {"v":1,"id":"a","names":' + _DEEP + b"}",  # json.loads
    ],
)
def test_a_deeply_nested_card_is_refused_with_a_caresync_error(data: bytes) -> None:
    with pytest.raises(InvalidInputError):
        PersonCard.from_bytes(data)
    with pytest.raises(RemoteProtocolError):
        card_from_wire("a", data)


@pytest.mark.parametrize("data", _LONE_SURROGATE_CARDS)
def test_a_card_with_a_lone_surrogate_is_refused(data: bytes) -> None:
    # Accepted, such a card cannot be hashed into keys nor written out again: the
    # store's write fails with UnicodeEncodeError (after the message was accepted).
    with pytest.raises(InvalidInputError):
        PersonCard.from_bytes(data)
    with pytest.raises(RemoteProtocolError):
        card_from_wire("a", data)


def test_an_escaped_surrogate_pair_is_still_a_card() -> None:
    card = PersonCard.from_bytes(b'{"v":1,"id":"a","names":[["\\ud83d\\ude00x"]]}')
    assert card.names == (("\U0001f600x",),)
    assert PersonCard.from_bytes(card.to_bytes()) == card


def test_a_deeply_nested_stored_pair_is_refused_with_a_caresync_error() -> None:
    with pytest.raises(InvalidInputError):
        PersonPair.from_bytes(b'{"state":"possible","score":' + _DEEP + b"}")
