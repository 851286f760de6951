"""Protocol version 3: live entries queued together travel in one LiveBatch frame."""

from __future__ import annotations

import msgpack
import pytest
from tests.protocol.session import SERVER_ID, enrolled_client, frame, handshake, pump, ready_pair

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    MIN_MAX_FRAME_BYTES,
    ClientProtocol,
    LiveBatch,
    LiveUpdate,
    ServerProtocol,
    decode_frame,
)

ENTRIES = [(1, "rec-a", b"u1"), (2, "rec-b", b"u2"), (3, "rec-a", b"u3")]


def subscribed_pair(**client_kwargs: object) -> tuple[ClientProtocol, ServerProtocol]:
    client, server = handshake(enrolled_client(**client_kwargs), ServerProtocol(SERVER_ID))
    client.subscribe(0)
    pump(client, server)
    server.events_received()
    return client, server


def test_several_entries_go_in_one_frame_and_arrive_as_live_updates() -> None:
    client, server = subscribed_pair()
    assert server.send_live_updates(ENTRIES) == 3
    frames = server.data_to_send()
    assert len(frames) == 1
    assert isinstance(decode_frame(frames[0])[1], LiveBatch)
    client.receive_data(frames[0])
    assert client.events_received() == [LiveUpdate(*entry) for entry in ENTRIES]
    assert client.live_seq == server.live_seq == 3
    # Entries already sent are skipped; nothing new, nothing queued.
    assert server.send_live_updates(ENTRIES[1:]) == 0
    assert server.data_to_send() == []
    # A single new entry goes as a plain LiveUpdate.
    assert server.send_live_updates([*ENTRIES, (4, "rec-c", b"u4")]) == 1
    [single] = server.data_to_send()
    assert decode_frame(single)[1] == LiveUpdate(4, "rec-c", b"u4")


def test_a_version_2_client_gets_one_live_update_per_entry() -> None:
    _client, server = subscribed_pair(protocol_versions=(1, 2))
    assert server.protocol_version == 2
    server.send_live_updates(ENTRIES)
    frames = server.data_to_send()
    assert [decode_frame(f) for f in frames] == [(2, LiveUpdate(*e)) for e in ENTRIES]


def test_batches_stay_within_the_clients_maximum_frame() -> None:
    client, server = subscribed_pair(max_frame_bytes=MIN_MAX_FRAME_BYTES)
    big = b"x" * 20_000
    entries = [(seq, f"rec-{seq}", big) for seq in range(1, 8)]
    server.send_live_updates(entries)
    frames = server.data_to_send()
    assert len(frames) > 1
    assert all(len(f) <= MIN_MAX_FRAME_BYTES for f in frames)
    for data in frames:
        client.receive_data(data)
    assert [e.seq for e in client.events_received()] == list(range(1, 8))


def test_a_batch_out_of_order_or_before_subscribe_is_refused() -> None:
    client, _server = subscribed_pair()
    client.receive_data(frame(LiveUpdate(5, "rec-a", b"u")))
    client.events_received()
    with pytest.raises(RemoteProtocolError, match="not after the last one"):
        client.receive_data(frame(LiveBatch(((4, "rec-a", b"u"), (6, "rec-b", b"v")))))
    unsubscribed, _ = ready_pair()
    with pytest.raises(RemoteProtocolError, match="before Subscribe"):
        unsubscribed.receive_data(frame(LiveBatch(((1, "rec-a", b"u"), (2, "rec-b", b"v")))))


def test_malformed_batches_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="non-empty"):
        LiveBatch(())
    with pytest.raises(LocalProtocolError, match="seq"):
        LiveBatch(((2, "rec-a", b"u"), (2, "rec-b", b"v")))
    with pytest.raises(LocalProtocolError, match="non-empty bytes"):
        LiveBatch(((1, "rec-a", b""),))
    forged = msgpack.packb([2, LiveBatch.TYPE_CODE, {"items": [[1, "rec-a", b"u"]]}])
    with pytest.raises(RemoteProtocolError, match="exists from version 3"):
        decode_frame(forged)
