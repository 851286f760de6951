"""Protocol version 10: a pull batch may merge a record's feed entries into one item,
and says how many feed entries it stands for (``PullBatch.entries``)."""

from __future__ import annotations

import msgpack
import pytest
from tests.protocol.session import SERVER_ID, enrolled_client, handshake, pump, ready_pair

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    COALESCED_PULL_SINCE,
    PROTOCOL_VERSION,
    FeedItem,
    PullBatch,
    ServerProtocol,
    decode_frame,
    encode_frame,
)

ITEMS = (FeedItem(4, "rec-b", b"u2"), FeedItem(7, "rec-a", b"u13"))


def test_a_batch_says_how_many_feed_entries_it_stands_for() -> None:
    batch = PullBatch(ITEMS, 8, 9, entries=5)
    assert batch.feed_entries == 5
    version, decoded = decode_frame(encode_frame(batch, version=COALESCED_PULL_SINCE))
    assert version == COALESCED_PULL_SINCE == 10 <= PROTOCOL_VERSION
    assert decoded == batch
    # Without the field (older servers), a batch stands for its items.
    assert PullBatch(ITEMS, 8, 9).feed_entries == 2


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        (1, r"entries must be an int in \[2, 8\]"),  # fewer than its items
        (9, r"entries must be an int in \[2, 8\]"),  # more seqs than the feed has
        (-1, "entries"),
        ("5", "entries"),
        (True, "entries"),
    ],
)
def test_an_impossible_count_is_refused(entries: object, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        PullBatch(ITEMS, 8, 9, entries=entries)  # type: ignore[arg-type]
    # Arriving, the same is the peer's fault.
    fields = {"items": [tuple(i) for i in ITEMS], "checkpoint": 8, "head_seq": 9}
    fields["entries"] = entries
    forged = msgpack.packb([COALESCED_PULL_SINCE, PullBatch.TYPE_CODE, fields])
    with pytest.raises(RemoteProtocolError):
        decode_frame(forged)


def test_a_version_9_frame_cannot_carry_the_count() -> None:
    with pytest.raises(LocalProtocolError, match="from protocol version 10"):
        encode_frame(PullBatch(ITEMS, 8, 9, entries=5), version=9)
    fields = {"items": [tuple(i) for i in ITEMS], "checkpoint": 8, "head_seq": 9, "entries": 5}
    with pytest.raises(RemoteProtocolError, match="unknown fields"):
        decode_frame(msgpack.packb([9, PullBatch.TYPE_CODE, fields]))


def test_merged_entries_through_both_protocol_objects() -> None:
    client, server = ready_pair()
    assert server.coalesces_pulls
    client.request_pull(3, 2)
    pump(client, server)
    server.events_received()
    server.send_pull_batch(ITEMS, checkpoint=8, head_seq=9, feed_entries=5)
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, PullBatch)
    assert (received.items, received.feed_entries, received.more) == (ITEMS, 5, True)


def test_the_server_cannot_claim_more_entries_than_the_feed_has_after_the_request() -> None:
    client, server = ready_pair()
    client.request_pull(6, 2)
    pump(client, server)
    server.events_received()
    # Five entries cannot lie between seq 6 and the checkpoint 8.
    with pytest.raises(LocalProtocolError, match="5 feed entries cannot fit"):
        server.send_pull_batch([ITEMS[1]], checkpoint=8, head_seq=9, feed_entries=5)
    # A server that sends it all the same is refused by the client.
    forged = PullBatch((ITEMS[1],), 8, 9, entries=5)
    with pytest.raises(RemoteProtocolError, match="stands for 5 feed entries"):
        client.receive_data(encode_frame(forged, version=client.protocol_version or 0))


def test_an_older_client_gets_no_merged_entries() -> None:
    client, server = handshake(
        enrolled_client(protocol_versions=(7, 8, 9)), ServerProtocol(SERVER_ID)
    )
    assert client.protocol_version == 9
    assert not server.coalesces_pulls
    client.request_pull(3, 2)
    pump(client, server)
    server.events_received()
    with pytest.raises(LocalProtocolError, match="older than version 10"):
        server.send_pull_batch(ITEMS, checkpoint=8, head_seq=9, feed_entries=5)
    server.send_pull_batch(ITEMS, checkpoint=8, head_seq=9)  # as they are: fine
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, PullBatch)
    assert received.feed_entries == 2
