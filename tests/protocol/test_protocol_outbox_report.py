"""OutboxReport (protocol version 2): the laptop tells the server what waits in its outbox."""

from __future__ import annotations

import msgpack
import pytest
from tests.protocol.session import (
    ORG,
    REPLICA_ID,
    SERVER_ID,
    frame,
    handshake,
    pump,
    ready_pair,
    sent_messages,
)

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    PROTOCOL_VERSION,
    ClientProtocol,
    Error,
    OutboxReport,
    ServerProtocol,
    ServerState,
    decode_frame,
    encode_frame,
)


def test_an_enrolled_client_reports_its_outbox_and_the_server_sees_it() -> None:
    client, server = ready_pair()
    assert client.protocol_version == server.protocol_version == PROTOCOL_VERSION
    assert client.can_report_outbox
    client.report_outbox(12, 1_700_000_000_123)
    assert pump(client, server) == 1
    assert server.events_received() == [OutboxReport(12, 1_700_000_000_123)]
    assert server.state is ServerState.READY
    assert server.data_to_send() == []  # no reply
    client.report_outbox(0, None)  # again, e.g. after a push: still legal
    pump(client, server)
    assert server.events_received() == [OutboxReport(0, None)]


@pytest.mark.parametrize(
    ("pending", "oldest"),
    [(0, 5), (3, None), (-1, None), (True, 5), (1, -5), (1, 2.5), (2**63, 1), (1, "5")],
)
def test_bad_fields_are_refused_before_anything_is_queued(pending: object, oldest: object) -> None:
    client, _server = ready_pair()
    with pytest.raises(LocalProtocolError, match="OutboxReport"):
        client.report_outbox(pending, oldest)  # type: ignore[arg-type]
    assert client.data_to_send() == []


def raw(version: int, body: dict[str, object]) -> bytes:
    return msgpack.packb([version, OutboxReport.TYPE_CODE, body], use_bin_type=True)


def test_the_same_bad_fields_from_the_wire_are_a_remote_protocol_error() -> None:
    _client, server = ready_pair()
    with pytest.raises(RemoteProtocolError, match="oldest_pending_ms"):
        server.receive_data(raw(2, {"pending": 1, "oldest_pending_ms": None}))
    [error] = sent_messages(server)
    assert isinstance(error, Error)
    assert error.code == "bad_message"


def test_a_version_1_peer_never_sees_one() -> None:
    """Backward compatible both ways: version 1 is agreed and the client does not send it."""
    old_server = ServerProtocol(SERVER_ID, protocol_versions=(1,))
    client = ClientProtocol(replica_id=REPLICA_ID, server_id=SERVER_ID, organisation=ORG)
    handshake(client, old_server)
    assert client.protocol_version == 1
    assert not client.can_report_outbox
    with pytest.raises(LocalProtocolError, match="from protocol version 2"):
        client.report_outbox(1, 1)
    assert client.data_to_send() == []
    old_client = ClientProtocol(
        replica_id=REPLICA_ID, server_id=SERVER_ID, organisation=ORG, protocol_versions=(1,)
    )
    _c, server = handshake(old_client, ServerProtocol(SERVER_ID))
    assert server.protocol_version == 1


def test_a_version_1_frame_holding_one_is_refused() -> None:
    old_server = ServerProtocol(SERVER_ID, protocol_versions=(1,))
    client = ClientProtocol(replica_id=REPLICA_ID, server_id=SERVER_ID, organisation=ORG)
    handshake(client, old_server)
    with pytest.raises(LocalProtocolError, match="from protocol version 2"):
        encode_frame(OutboxReport(1, 1), version=1)
    v1_frame = raw(1, {"pending": 1, "oldest_pending_ms": 1})
    with pytest.raises(RemoteProtocolError, match="exists from version 2"):
        decode_frame(v1_frame)
    with pytest.raises(RemoteProtocolError, match="exists from version 2"):
        old_server.receive_data(v1_frame)


def test_a_replica_not_enrolled_cannot_report() -> None:
    client, server = ready_pair(enrolled=False)
    with pytest.raises(LocalProtocolError, match="enrolled"):
        client.report_outbox(1, 1)
    with pytest.raises(RemoteProtocolError, match="not enrolled"):
        server.receive_data(frame(OutboxReport(1, 1)))
