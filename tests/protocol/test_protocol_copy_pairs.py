"""Protocol version COPY_PAIRS_SINCE: a first-copy batch carries the server's person pairs.

A pair is two record ids, ``first < second``, sent with the batch holding ``second``;
``first`` is a record of the batch or of an earlier one. Anything else from the wire is
a RemoteProtocolError, and a peer of an older version neither sends nor gets them.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    COPY_PAIRS_SINCE,
    PROTOCOL_VERSION,
    CopyBatch,
    CopyPair,
    CopyPerson,
    CopyRecord,
    decode_frame,
    encode_frame,
)

IDS = ["r-10", "r-11", "r-12"]
CARD = b'{"v":1,"id":"x"}'


def batch(pairs: Any, persons: Any = "all") -> CopyBatch:
    """A batch of records r-10, r-11 and r-12 (each with a card unless told), with
    ``pairs``."""
    return CopyBatch(
        tuple(CopyRecord(rid, b"\x00\x00") for rid in IDS),
        3,
        9,
        6,
        6,
        IDS[-1],
        5,
        False,
        (),
        tuple(CopyPerson(rid, CARD) for rid in IDS) if persons == "all" else persons,
        pairs,
    )


def test_pairs_of_the_batch_and_of_earlier_batches_are_accepted_as_pairs() -> None:
    sent = batch([("r-01", "r-10"), ["r-10", "r-11"], ("r-05", "r-12"), ("r-11", "r-12")])
    assert sent.pairs == (
        CopyPair("r-01", "r-10"),
        CopyPair("r-10", "r-11"),
        CopyPair("r-05", "r-12"),
        CopyPair("r-11", "r-12"),
    )
    assert all(type(pair) is CopyPair for pair in sent.pairs)
    assert batch([]).pairs == ()
    assert batch(None).pairs is None


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([("r-01",)], "a \\(first, second\\) pair"),
        (["r-01r-10"], "a \\(first, second\\) pair"),
        ([("r-01", "r-10", "r-11")], "a \\(first, second\\) pair"),
        ([("r-01", "r-99")], "second must be a record of this batch"),  # not in the batch
        ([("r-01", 10)], "second must be a record of this batch"),
        ([(1, "r-10")], "first must be a printable str"),
        ([("", "r-10")], "first must be a printable str"),
        ([("r-11", "r-10")], "first must be an id before its second"),
        ([("r-10", "r-10")], "first must be an id before its second"),
        # After the batch's first record, yet not one of its records.
        ([("r-105", "r-11")], "first must be a record of this batch with a person card"),
        ([("r-10", "r-11"), ("r-01", "r-10")], "ordered by \\(second, first\\)"),
        ([("r-01", "r-10"), ("r-01", "r-10")], "ordered by \\(second, first\\), each once"),
        ("r-01", "pairs must be a tuple"),
    ],
)
def test_malformed_pairs_are_refused(pairs: Any, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        batch(pairs)


def test_a_pair_names_records_of_the_batch_with_a_card_only() -> None:
    only_two = (CopyPerson("r-10", CARD), CopyPerson("r-12", CARD))
    assert batch([("r-10", "r-12")], only_two).pairs == (CopyPair("r-10", "r-12"),)
    with pytest.raises(LocalProtocolError, match="second must be a record of this batch"):
        batch([("r-10", "r-11")], only_two)
    with pytest.raises(LocalProtocolError, match="first must be a record of this batch"):
        batch([("r-11", "r-12")], only_two)
    with pytest.raises(LocalProtocolError, match="pairs come only with person cards"):
        batch([("r-10", "r-12")], None)


def test_pairs_travel_from_their_version_and_not_before() -> None:
    sent = batch([("r-01", "r-10"), ("r-10", "r-11")])
    assert decode_frame(encode_frame(sent, version=COPY_PAIRS_SINCE)) == (COPY_PAIRS_SINCE, sent)
    older = COPY_PAIRS_SINCE - 1
    with pytest.raises(LocalProtocolError, match="exists from protocol version"):
        encode_frame(sent, version=older)
    without = batch(None)
    assert decode_frame(encode_frame(without, version=older)) == (older, without)
    assert PROTOCOL_VERSION >= COPY_PAIRS_SINCE


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([["r-01", "r-99"]], "second must be a record of this batch"),
        ([["r-12", "r-11"]], "first must be an id before its second"),
        ([["r-01"]], "a \\(first, second\\) pair"),
        ([[b"r-01", "r-10"]], "first must be a printable str"),
        ({"r-01": "r-10"}, "pairs must be a tuple"),
    ],
)
def test_pairs_from_the_wire_that_break_the_rules_are_remote_errors(
    pairs: object, match: str
) -> None:
    body: dict[str, Any] = batch([]).to_body(COPY_PAIRS_SINCE)
    body["pairs"] = pairs
    frame = msgpack.packb([COPY_PAIRS_SINCE, CopyBatch.TYPE_CODE, body], use_bin_type=True)
    with pytest.raises(RemoteProtocolError, match=match):
        decode_frame(frame)
