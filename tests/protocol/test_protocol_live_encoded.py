"""Live frames encoded once and sent on many connections (``encode_live`` and
``send_encoded_live``): the same bytes ``send_live_updates`` would queue, in every case
it distinguishes, and the same rules on what may be sent."""

from __future__ import annotations

import pytest
from tests.protocol.session import SERVER_ID, enrolled_client, handshake, pump, ready_pair

from caresync.exceptions import LocalProtocolError
from caresync.protocol import (
    MIN_MAX_FRAME_BYTES,
    CheckedState,
    ClientProtocol,
    CopyConflict,
    LiveBatch,
    LiveUpdate,
    RecordCheck,
    ServerProtocol,
)

FP = "rules-v1:abc"
ONE = [(1, "rec-a", b"u1")]
SEVERAL = [(1, "rec-a", b"u1"), (2, "rec-b", b"u2"), (3, "rec-a", b"u3")]
BIG = [(seq, f"rec-{seq}", b"x" * 20_000) for seq in range(1, 8)]
STATE_A = CheckedState("rec-a", b"\x01\x05\x02", None)
ROW = CopyConflict("rec-a", "f-1", "rule", "birthDate", "block", b'{"x":1}')
CHECKS = {"rec-a": RecordCheck(STATE_A, (ROW,))}


def subscribed(
    rulebook: str | None = None, **client: object
) -> tuple[ClientProtocol, ServerProtocol]:
    if client:
        pair = handshake(enrolled_client(**client), ServerProtocol(SERVER_ID))
    else:
        pair = ready_pair()
    laptop, server = pair
    laptop.subscribe(0, rulebook)
    pump(laptop, server)
    server.events_received()
    return laptop, server


CASES = [
    pytest.param({}, ONE, None, id="one entry"),
    pytest.param({}, SEVERAL, None, id="a batch"),
    pytest.param({"protocol_versions": (1, 2)}, SEVERAL, None, id="version 2"),
    pytest.param({"max_frame_bytes": MIN_MAX_FRAME_BYTES}, BIG, None, id="split frames"),
    pytest.param({}, SEVERAL, CHECKS, id="with checks"),
]


@pytest.mark.parametrize(("client", "entries", "checks"), CASES)
def test_encoded_frames_are_the_frames_send_live_updates_queues(
    client: dict[str, object],
    entries: list[tuple[int, str, bytes]],
    checks: dict[str, RecordCheck] | None,
) -> None:
    rulebook = FP if checks is not None else None
    _a, one = subscribed(rulebook, **client)
    laptop, other = subscribed(rulebook, **client)
    assert one.live_encoding(checks is not None) == other.live_encoding(checks is not None)
    assert one.send_live_updates(entries, checks) == len(entries)
    expected = one.data_to_send()
    frames = other.encode_live(entries, checks)
    assert list(frames) == expected
    assert other.live_seq == 0  # encoding changes nothing
    assert not other.has_data_to_send
    other.send_encoded_live(frames, entries[-1][0])
    assert other.live_seq == one.live_seq == entries[-1][0]
    pump(other, laptop)
    received = laptop.events_received()
    seqs: list[int] = []
    for event in received:
        if isinstance(event, LiveBatch):  # with checks: one event per frame
            seqs.extend(item.seq for item in event.items)
        else:
            assert isinstance(event, LiveUpdate)
            seqs.append(event.seq)
    assert seqs == [seq for seq, _rid, _u in entries]
    assert laptop.live_seq == entries[-1][0]


def test_connections_that_differ_in_what_the_bytes_depend_on_have_other_encodings() -> None:
    _a, plain = subscribed()
    _b, old = subscribed(None, protocol_versions=(1, 2))
    _c, small = subscribed(None, max_frame_bytes=MIN_MAX_FRAME_BYTES)
    encodings = {s.live_encoding(False) for s in (plain, old, small)}
    assert len(encodings) == 3
    assert plain.live_encoding(True) != plain.live_encoding(False)


def test_encoded_frames_follow_the_rules_of_live_sends() -> None:
    laptop, server = ready_pair()
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        server.encode_live(SEVERAL)
    assert not server.can_send_live
    with pytest.raises(LocalProtocolError, match="no live frames"):
        server.send_encoded_live([b"frame"], 3)
    laptop.subscribe(0)
    pump(laptop, server)
    server.events_received()
    assert server.can_send_live
    server.send_encoded_live(server.encode_live(SEVERAL), 3)
    with pytest.raises(LocalProtocolError, match="after the last one sent"):
        server.encode_live(SEVERAL)  # already sent
    with pytest.raises(LocalProtocolError, match="not after the last one sent"):
        server.send_encoded_live([b"frame"], 3)
    with pytest.raises(LocalProtocolError, match="named no rulebook"):
        server.encode_live([(4, "rec-a", b"u4")], CHECKS)


def test_a_connection_further_along_the_feed_has_another_encoding_when_checks_go() -> None:
    # From version 9, what goes as a reference depends on how far the client had the
    # feed: connections at different places must not share frames that carry checks.
    _a, behind = subscribed(FP)
    laptop, ahead = subscribed(FP)
    ahead.send_live_updates(ONE, CHECKS)
    pump(ahead, laptop)
    assert behind.live_encoding(True) != ahead.live_encoding(True)
    # Without checks the frames do not depend on it, and are shared.
    assert behind.live_encoding(False) == ahead.live_encoding(False)


@pytest.mark.parametrize(("client", "entries", "checks"), CASES)
def test_frames_written_directly_are_noted_as_sent_live(
    client: dict[str, object],
    entries: list[tuple[int, str, bytes]],
    checks: dict[str, RecordCheck] | None,
) -> None:
    """``sent_encoded_live``: the frames of ``encode_live``, written to the connection
    by the caller (a fan-out), leave the protocol as ``send_encoded_live`` then
    ``data_to_send`` would: the same live position, nothing queued, and the laptop
    takes the frames as written."""
    rulebook = FP if checks is not None else None
    _a, queued = subscribed(rulebook, **client)
    laptop, direct = subscribed(rulebook, **client)
    frames = direct.encode_live(entries, checks)
    queued.send_encoded_live(frames, entries[-1][0])
    assert list(frames) == queued.data_to_send()
    direct.sent_encoded_live(entries[-1][0])
    assert direct.live_seq == queued.live_seq == entries[-1][0]
    assert not direct.has_data_to_send
    for frame in frames:  # what the fan-out wrote to the socket
        laptop.receive_data(frame)
    assert laptop.live_seq == entries[-1][0]
    with pytest.raises(LocalProtocolError, match="not after the last one sent"):
        direct.sent_encoded_live(entries[-1][0])


def test_frames_are_noted_as_sent_live_only_when_they_may_be_and_nothing_waits() -> None:
    laptop, server = ready_pair()
    with pytest.raises(LocalProtocolError, match="no live frames"):
        server.sent_encoded_live(3)  # not subscribed
    laptop.subscribe(0)
    pump(laptop, server)
    server.events_received()
    server.send_live_updates(ONE)  # queued, not yet taken
    with pytest.raises(LocalProtocolError, match="frames wait to be sent"):
        server.sent_encoded_live(3)
    assert server.live_seq == 1  # unchanged by the refusal
    server.data_to_send()
    server.sent_encoded_live(3)
    assert server.live_seq == 3
