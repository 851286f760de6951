"""Protocol version 8: pulled and live entries may carry the server's checked states;
version 9: their cards as references."""

from __future__ import annotations

import msgpack
import pytest
from tests.protocol.session import (
    SERVER_ID,
    enrolled_client,
    frame,
    handshake,
    pump,
    ready_pair,
)

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    CARD_DIGEST_BYTES,
    CARD_REFERENCE_SINCE,
    MAX_STATE_VECTOR_BYTES,
    MIN_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    CheckedState,
    CopyConflict,
    FeedItem,
    LiveBatch,
    LiveUpdate,
    PullBatch,
    PullRequest,
    RecordCheck,
    ServerProtocol,
    Subscribe,
    card_reference,
    decode_frame,
    encode_frame,
    is_card_reference,
    is_held_reference,
)

FP = "rules-v1:abc"
ITEMS = (FeedItem(3, "rec-a", b"u1"), FeedItem(4, "rec-b", b"u2"), FeedItem(5, "rec-a", b"u3"))
STATE_A = CheckedState("rec-a", b"\x01\x05\x02", None)
STATE_B = CheckedState("rec-b", b"\x01\x07\x01", b"card-b")
ROW = CopyConflict("rec-a", "f-1", "rule", "birthDate", "block", b'{"x":1}')
CHECKS = {
    "rec-a": RecordCheck(STATE_A, (ROW,)),
    "rec-b": RecordCheck(STATE_B, ()),
}


def pull(**changes: object) -> PullBatch:
    fields: dict[str, object] = {
        "items": ITEMS,
        "checkpoint": 5,
        "head_seq": 9,
        "checked": (STATE_A, STATE_B),
        "conflicts": (ROW,),
    }
    fields.update(changes)
    return PullBatch(**fields)  # type: ignore[arg-type]


def test_the_new_fields_round_trip_in_version_8() -> None:
    for message in (
        PullRequest(0, 10, None, FP),
        Subscribe(4, FP),
        pull(),
        LiveBatch(ITEMS, (STATE_A,), (ROW,)),
        LiveBatch(ITEMS[:1], (), ()),
    ):
        assert decode_frame(encode_frame(message, version=8)) == (8, message)


def test_older_versions_neither_write_nor_accept_the_new_fields() -> None:
    plain = PullBatch(ITEMS, 5, 9)
    data = encode_frame(plain, version=7)
    assert set(msgpack.unpackb(data)[2]) == {"items", "checkpoint", "head_seq"}
    assert decode_frame(data) == (7, plain)
    for message in (pull(), PullRequest(0, 10, None, FP), Subscribe(0, FP)):
        with pytest.raises(LocalProtocolError, match="exists from protocol version 8"):
            encode_frame(message, version=7)
    forged = msgpack.packb([7, Subscribe.TYPE_CODE, {"after_seq": 0, "rulebook": FP}])
    with pytest.raises(RemoteProtocolError, match="unknown fields"):
        decode_frame(forged)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"conflicts": None}, "checked and conflicts come together"),
        ({"checked": None}, "checked and conflicts come together"),
        ({"checked": (STATE_A._replace(record_id="rec-z"),)}, "the id of a record in this batch"),
        ({"checked": (STATE_B, STATE_A)}, "in batch order, one per record"),
        ({"checked": (STATE_A, STATE_A)}, "in batch order, one per record"),
        ({"checked": (STATE_A._replace(state_vector=b""),)}, "state_vector must be bytes"),
        (
            {"checked": (STATE_A._replace(state_vector=b"x" * (MAX_STATE_VECTOR_BYTES + 1)),)},
            "state_vector must be bytes",
        ),
        ({"checked": (STATE_A._replace(state_vector="text"),)}, "state_vector must be bytes"),
        ({"checked": (STATE_B._replace(card=b""),), "conflicts": ()}, "card must be non-empty"),
        ({"checked": (("rec-a", b"\x00"),)}, "a \\(record_id, state_vector, card\\) triple"),
        ({"checked": (STATE_B,)}, "the id of a checked record"),  # ROW names rec-a
        ({"conflicts": (ROW, ROW)}, "in record order"),
        ({"conflicts": (ROW._replace(payload=b""),)}, "payload must be non-empty bytes"),
        ({"checked": "not a tuple"}, "checked must be a tuple"),
    ],
)
def test_malformed_checks_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        pull(**changes)
    # Arriving, the same is the peer's fault.
    fields = {"items": [tuple(i) for i in ITEMS], "checkpoint": 5, "head_seq": 9}
    fields |= {"checked": [STATE_A, STATE_B], "conflicts": [ROW]}
    fields.update(changes)  # type: ignore[arg-type]
    forged = msgpack.packb([8, PullBatch.TYPE_CODE, fields])
    with pytest.raises(RemoteProtocolError):
        decode_frame(forged)


def test_a_pull_with_checks_through_both_protocol_objects() -> None:
    client, server = handshake(
        enrolled_client(protocol_versions=(4, 5, 6, 7, 8)), ServerProtocol(SERVER_ID)
    )
    assert client.protocol_version == 8
    client.request_pull(2, 10, rulebook=FP)
    pump(client, server)
    [request] = server.events_received()
    assert request == PullRequest(2, 10, None, FP)
    server.send_pull_batch(ITEMS, checkpoint=5, head_seq=9, checks=CHECKS)
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, PullBatch)
    assert received.checked == (STATE_A, STATE_B)  # in the order records first appear
    assert received.conflicts == (ROW,)


def test_from_version_9_cards_go_as_references() -> None:
    client, server = ready_pair()
    assert client.protocol_version == PROTOCOL_VERSION >= CARD_REFERENCE_SINCE == 9
    client.request_pull(2, 10, rulebook=FP)
    pump(client, server)
    server.events_received()
    server.send_pull_batch(ITEMS, checkpoint=5, head_seq=9, checks=CHECKS)
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, PullBatch)
    assert received.checked is not None
    state_a, state_b = received.checked
    assert state_a == STATE_A  # no card: nothing to refer to
    assert state_b.state_vector == STATE_B.state_vector
    assert state_b.card == card_reference(b"card-b") != b"card-b"
    assert len(state_b.card) == CARD_DIGEST_BYTES + 1
    assert is_card_reference(state_b.card)
    assert not is_card_reference(b"card-b")
    assert not is_card_reference(b'{"v":1,"id":"rec-b","names":[["a","b"]]}')
    assert received.conflicts == (ROW,)  # rows go in full
    # Live frames too.
    client.subscribe(2, rulebook=FP)
    pump(client, server)
    server.events_received()
    server.send_live_updates([(i.seq, i.record_id, i.update) for i in ITEMS], checks=CHECKS)
    pump(server, client)
    frames = client.events_received()
    assert all(isinstance(f, LiveBatch) for f in frames)
    cards = {
        s.record_id: s.card for f in frames if isinstance(f, LiveBatch) for s in f.checked or ()
    }
    assert cards == {"rec-a": None, "rec-b": card_reference(b"card-b")}


def test_checks_go_only_to_a_request_that_named_a_rulebook() -> None:
    client, server = ready_pair()
    client.request_pull(2, 10)
    pump(client, server)
    server.events_received()
    with pytest.raises(LocalProtocolError, match="named no rulebook"):
        server.send_pull_batch(ITEMS, checkpoint=5, head_seq=9, checks=CHECKS)
    with pytest.raises(RemoteProtocolError, match="named no rulebook"):
        client.receive_data(frame(pull()))


def test_checks_that_do_not_fit_the_frame_are_left_out() -> None:
    client = enrolled_client(max_frame_bytes=MIN_MAX_FRAME_BYTES)
    client, server = handshake(client, ServerProtocol(SERVER_ID))
    client.request_pull(2, 10, rulebook=FP)
    pump(client, server)
    server.events_received()
    big = ROW._replace(payload=b"x" * (MIN_MAX_FRAME_BYTES // 2))
    checks = {**CHECKS, "rec-a": RecordCheck(STATE_A, (big, big._replace(id="f-2")))}
    server.send_pull_batch(ITEMS, checkpoint=5, head_seq=9, checks=checks)
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, PullBatch)
    assert received.checked == ()  # rec-a's did not fit, and the rest follow it
    assert received.conflicts == ()
    assert len(received.items) == 3  # the entries all go


def test_a_version_7_session_sends_no_rulebook_and_gets_no_checks() -> None:
    client, server = handshake(enrolled_client(protocol_versions=(6, 7)), ServerProtocol(SERVER_ID))
    assert client.protocol_version == 7
    client.request_pull(0, 5, rulebook=FP)
    client.subscribe(0, FP)
    for data in client.data_to_send():
        version, message = decode_frame(data)
        assert version == 7
        assert message in (PullRequest(0, 5, None, None), Subscribe(0, None))
        server.receive_data(data)
    server.events_received()
    assert server.live_rulebook is None
    with pytest.raises(LocalProtocolError, match="named no rulebook"):
        server.send_live_updates(ITEMS, CHECKS)
    assert server.send_live_updates(ITEMS) == 3  # as before: one LiveBatch


def test_live_entries_with_checks_are_one_event() -> None:
    client, server = ready_pair()
    client.subscribe(2, FP)
    pump(client, server)
    server.events_received()
    assert server.live_rulebook == FP
    assert server.send_live_updates(ITEMS[:1], CHECKS) == 1  # one entry: a LiveBatch all the same
    assert server.send_live_updates(ITEMS, CHECKS) == 2  # skips what was sent
    pump(server, client)
    first, second = client.events_received()
    assert first == LiveBatch(ITEMS[:1], (STATE_A,), (ROW,))
    # Version 9: the card as a reference.
    referred = STATE_B._replace(card=card_reference(b"card-b"))
    assert second == LiveBatch(ITEMS[1:], (referred, STATE_A), (ROW,))
    assert client.live_seq == 5


def test_a_client_that_named_no_rulebook_refuses_checked_live_entries() -> None:
    client, server = ready_pair()
    client.subscribe(2)
    pump(client, server)
    server.events_received()
    server.send_live_updates(ITEMS)
    pump(server, client)
    assert all(isinstance(e, LiveUpdate) for e in client.events_received())
    with pytest.raises(RemoteProtocolError, match="Subscribe named no rulebook"):
        client.receive_data(frame(LiveBatch((FeedItem(6, "rec-a", b"u4"),), (), ())))


def test_a_copy_request_sizes_its_batch_by_bytes_from_version_8() -> None:
    from caresync.protocol import CopyRequest

    sized = CopyRequest(None, 500, FP, 4096)
    assert decode_frame(encode_frame(sized, version=8)) == (8, sized)
    with pytest.raises(LocalProtocolError, match="exists from protocol version 8"):
        encode_frame(sized, version=7)
    with pytest.raises(LocalProtocolError, match="batch_bytes must be an int"):
        CopyRequest(None, 500, FP, 0)
    client, _server = handshake(
        enrolled_client(protocol_versions=(6, 7)), ServerProtocol(SERVER_ID)
    )
    client.request_copy(None, 5, FP, 4096)
    [data] = client.data_to_send()
    assert decode_frame(data) == (7, CopyRequest(None, 5, FP, None))


def test_a_checks_references_are_the_same_with_its_digests_given() -> None:
    from caresync.protocol import held_reference, rows_digest

    for check in CHECKS.values():
        card = card_reference(check.state.card or b"")
        given = RecordCheck(check.state, check.rows, 0, 0, (card, rows_digest(check.rows)))
        assert given.card_reference() == check.card_reference() == card
        assert given.held_reference() == check.held_reference()
        assert check.held_reference() == held_reference(check.state.card, check.rows)
        assert is_held_reference(check.held_reference())
    # The rows' digest depends on every field and not on their order.
    other = ROW._replace(id="f-2", payload=b'{"x":2}')
    assert rows_digest((ROW, other)) == rows_digest((other, ROW))
    assert rows_digest((ROW,)) != rows_digest((ROW._replace(payload=b'{"x":3}'),))
    assert rows_digest((ROW,)) != rows_digest((ROW._replace(severity="warn"),))
    assert rows_digest(()) != rows_digest((ROW,))


def test_held_references_fill_the_frame_as_check_wire_size_says() -> None:
    """Held references (card and rows held since before the batch) are sized without a
    RecordCheck built for each: as many fit a small frame as ``check_wire_size`` allows,
    in batch order, and each is the check's held reference."""
    from caresync.protocol.codec import item_wire_size
    from caresync.protocol.server import BATCH_OVERHEAD_BYTES, check_wire_size

    client = enrolled_client(max_frame_bytes=MIN_MAX_FRAME_BYTES)
    client, server = handshake(client, ServerProtocol(SERVER_ID))
    client.request_pull(2, 1000, rulebook=FP)
    pump(client, server)
    server.events_received()
    items = [FeedItem(3 + i, f"rec-{i:04d}", b"u") for i in range(600)]
    checks = {
        item.record_id: RecordCheck(
            CheckedState(item.record_id, b"\x01\x05\x02", b"card-" + item.record_id.encode()),
            (ROW._replace(record_id=item.record_id),),
            card_since=1,
            rows_since=2,
        )
        for item in items
    }
    server.send_pull_batch(items, checkpoint=602, head_seq=700, checks=checks)
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, PullBatch)
    assert received.checked is not None
    assert received.conflicts == ()
    # What the frame allows, counted with check_wire_size of each referring check.
    budget = MIN_MAX_FRAME_BYTES - BATCH_OVERHEAD_BYTES
    budget -= sum(item_wire_size(i.record_id, i.update) for i in items)
    fits = 0
    for item in items:
        check = checks[item.record_id]
        state = check.state._replace(card=check.held_reference())
        budget -= check_wire_size(RecordCheck(state, ()))
        if budget < 0:
            break
        fits += 1
    assert 0 < fits < len(items)  # the frame is the limit here
    assert len(received.checked) == fits
    for state in received.checked:
        check = checks[state.record_id]
        assert state == CheckedState(
            state.record_id, check.state.state_vector, check.held_reference()
        )
    assert [s.record_id for s in received.checked] == [i.record_id for i in items[:fits]]
