"""Protocol version 5: a first copy's conflict rows may come with the records' person cards."""

from __future__ import annotations

import pytest
from tests.protocol.session import pump, ready_pair
from tests.protocol.test_protocol_copy_conflicts import ROW
from tests.protocol.test_protocol_copy_conflicts import batch as batch_with_rows

from caresync.exceptions import LocalProtocolError
from caresync.protocol import (
    PROTOCOL_VERSION,
    CopyBatch,
    CopyPerson,
    decode_frame,
    encode_frame,
)

CARD = CopyPerson("rec-a", b'{"v":1,"id":"rec-a"}')


def batch(**changes: object) -> CopyBatch:
    """The version 3 tests' batch (two records, one conflict row), with a card."""
    return batch_with_rows(**{"persons": (CARD,), **changes})


def test_cards_round_trip_in_version_5_and_are_refused_in_version_4() -> None:
    sent = batch(persons=(CARD, CopyPerson("rec-b", b"card b")))
    assert decode_frame(encode_frame(sent, version=5)) == (5, sent)
    assert decode_frame(encode_frame(batch(persons=()), version=5))[1].persons == ()
    assert decode_frame(encode_frame(batch(persons=None), version=4))[1].persons is None
    with pytest.raises(LocalProtocolError, match="exists from protocol version 5"):
        encode_frame(sent, version=4)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"conflicts": None}, "person cards come only with conflict rows"),
        ({"persons": (CARD._replace(record_id="rec-z"),)}, "the id of a record in this batch"),
        ({"persons": (CopyPerson("rec-b", b"b"), CARD)}, "in record order"),
        ({"persons": (CARD, CARD)}, "in record order"),
        ({"persons": (CARD._replace(card=b""),)}, "card must be non-empty bytes"),
        ({"persons": (("rec-a",),)}, "a \\(record_id, card\\) pair"),
        ({"persons": "cards"}, "persons must be a tuple"),
        # A card for every record (the quick pass declines, the careful one names it):
        ({"persons": (CARD, CopyPerson("rec-b", b""))}, "card must be non-empty bytes"),
        ({"persons": (CARD, CopyPerson("rec-b", "b"))}, "card must be non-empty bytes"),
        ({"persons": (CARD, CopyPerson(b"rec-b", b"b"))}, "the id of a record in this batch"),
        ({"persons": (CARD, CopyPerson("rec-c", b"c"))}, "the id of a record in this batch"),
        ({"persons": (CARD, ("rec-b", b"b", b"x"))}, "a \\(record_id, card\\) pair"),
    ],
)
def test_malformed_cards_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        batch(**changes)


def test_a_card_for_every_record_is_taken_as_sent() -> None:
    cards = (CARD, CopyPerson("rec-b", b"card b"))
    for given in (cards, [tuple(c) for c in cards], [list(c) for c in cards[:1]]):
        taken = batch(persons=given).persons
        assert taken == tuple(CopyPerson(*c) for c in given)
        assert {type(c) for c in taken or ()} == {CopyPerson}


def test_cards_through_both_protocol_objects() -> None:
    client, server = ready_pair()
    assert client.protocol_version == PROTOCOL_VERSION >= 5
    client.request_copy(None, 5, "rules-v1:abc")
    pump(client, server)
    server.events_received()
    server.send_copy_batch(
        [("rec-a", b"u1"), ("rec-b", b"u2")],
        done_records=2,
        total_records=2,
        done_bytes=4,
        total_bytes=4,
        feed_checkpoint=9,
        final=True,
        conflicts=[tuple(ROW)],
        persons=[tuple(CARD)],
    )
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, CopyBatch)
    assert received.persons == (CARD,)
