"""Protocol version 3: a first copy may carry the records' conflict index rows."""

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
    PROTOCOL_VERSION,
    CopyBatch,
    CopyConflict,
    CopyRecord,
    CopyRequest,
    ServerProtocol,
    decode_frame,
    encode_frame,
)

FP = "rules-v1:abc"
ROW = CopyConflict("rec-a", "f-1", "rule", "birthDate", "block", b'{"x":1}')


def batch(**changes: object) -> CopyBatch:
    fields: dict[str, object] = {
        "records": (CopyRecord("rec-a", b"u1"), CopyRecord("rec-b", b"u2")),
        "done_records": 2,
        "total_records": 2,
        "done_bytes": 4,
        "total_bytes": 4,
        "last_record_id": "rec-b",
        "feed_checkpoint": 9,
        "final": True,
        "conflicts": (ROW,),
    }
    fields.update(changes)
    return CopyBatch(**fields)  # type: ignore[arg-type]


def test_the_new_fields_round_trip_in_version_3() -> None:
    request = CopyRequest("rec-0", 10, FP)
    assert decode_frame(encode_frame(request, version=3)) == (3, request)
    sent = batch()
    assert decode_frame(encode_frame(sent, version=3)) == (3, sent)
    assert decode_frame(encode_frame(batch(conflicts=()), version=3))[1].conflicts == ()


def test_older_versions_neither_write_nor_accept_the_new_fields() -> None:
    # Written in version 2, the fields are absent; decoded, they are None ("not sent").
    plain = CopyRequest("rec-0", 10)
    data = encode_frame(plain, version=2)
    assert msgpack.unpackb(data)[2] == {"after_record_id": "rec-0", "batch_records": 10}
    assert decode_frame(data) == (2, plain)
    assert decode_frame(encode_frame(batch(conflicts=None), version=2))[1].conflicts is None
    # A value that version 2 cannot carry is refused, never dropped without a word.
    with pytest.raises(LocalProtocolError, match="exists from protocol version 3"):
        encode_frame(CopyRequest("rec-0", 10, FP), version=2)
    with pytest.raises(LocalProtocolError, match="exists from protocol version 3"):
        encode_frame(batch(), version=2)
    # A version 2 frame holding a version 3 field is malformed.
    forged = msgpack.packb(
        [2, CopyRequest.TYPE_CODE, {"after_record_id": None, "batch_records": 1, "rulebook": FP}]
    )
    with pytest.raises(RemoteProtocolError, match="unknown fields"):
        decode_frame(forged)


@pytest.mark.parametrize(
    ("conflicts", "match"),
    [
        ([ROW._replace(record_id="rec-z")], "the id of a record in this batch"),
        ([ROW._replace(record_id="rec-b"), ROW], "in record order"),
        ([ROW, ROW], "in record order"),
        ([ROW._replace(payload=b"")], "payload must be non-empty bytes"),
        ([ROW._replace(kind="")], "kind must be"),
        ([ROW._replace(subject="s" * 5000)], "subject must be"),
        ([("rec-a", "f-1")], "a \\(record_id, id, kind, subject, severity, payload\\) tuple"),
        ("not a tuple", "conflicts must be a tuple"),
    ],
)
def test_malformed_conflict_rows_are_refused(conflicts: object, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        batch(conflicts=conflicts)


def test_rows_in_record_order_with_several_per_record_are_accepted() -> None:
    rows = (ROW, ROW._replace(id="f-2"), ROW._replace(record_id="rec-b"))
    assert batch(conflicts=[tuple(r) for r in rows]).conflicts == rows


def test_a_copy_with_rows_through_both_protocol_objects() -> None:
    client, server = ready_pair()
    assert client.protocol_version == PROTOCOL_VERSION
    client.request_copy(None, 5, FP)
    pump(client, server)
    [request] = server.events_received()
    assert request == CopyRequest(None, 5, FP)
    server.send_copy_batch(
        [("rec-a", b"u1"), ("rec-b", b"u2")],
        done_records=2,
        total_records=2,
        done_bytes=4,
        total_bytes=4,
        feed_checkpoint=9,
        final=True,
        conflicts=[tuple(ROW)],
    )
    pump(server, client)
    [received] = client.events_received()
    assert isinstance(received, CopyBatch)
    assert received.conflicts == (ROW,)


def test_rows_answer_only_a_request_that_named_a_rulebook() -> None:
    client, server = ready_pair()
    client.request_copy(None, 5)
    pump(client, server)
    server.events_received()
    with pytest.raises(LocalProtocolError, match="named no rulebook"):
        server.send_copy_batch(
            [("rec-a", b"u1")],
            done_records=1,
            total_records=1,
            done_bytes=2,
            total_bytes=2,
            feed_checkpoint=0,
            final=True,
            conflicts=[tuple(ROW)],
        )
    # A server that sends them all the same breaks the protocol.
    with pytest.raises(RemoteProtocolError, match="named no rulebook"):
        client.receive_data(
            frame(batch(records=(CopyRecord("rec-a", b"u1"),), last_record_id="rec-a"))
        )


def test_a_version_2_session_sends_no_rulebook() -> None:
    client, _server = handshake(
        enrolled_client(protocol_versions=(1, 2)), ServerProtocol(SERVER_ID)
    )
    assert client.protocol_version == 2
    client.request_copy(None, 5, FP)
    [data] = client.data_to_send()
    version, request = decode_frame(data)
    assert (version, request) == (2, CopyRequest(None, 5, None))
