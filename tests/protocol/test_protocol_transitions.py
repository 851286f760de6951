"""Every move the tables do not allow is refused, in every state, both ways, both ends."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest
from tests.protocol.session import (
    NONCE,
    ORG,
    PASSWORD,
    SAMPLES,
    SERVER_ID,
    SERVER_KEY,
    SIGNATURE,
    TOKEN,
    USER,
    client_in,
    frame,
    ready_pair,
    sent_messages,
    server_in,
)

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    CLIENT_TRANSITIONS,
    MESSAGE_TYPES,
    SERVER_TRANSITIONS,
    AuditAck,
    AuditBatch,
    Authenticate,
    Authenticated,
    ClientProtocol,
    ClientState,
    CopyBatch,
    CopyRecord,
    CopyRequest,
    Direction,
    Enrol,
    Enrolled,
    Error,
    FeedItem,
    Goodbye,
    Hello,
    HubReport,
    LiveBatch,
    LiveUpdate,
    Message,
    OutboxReport,
    ProveServer,
    Pseudo,
    PullBatch,
    PullRequest,
    PushAck,
    PushBatch,
    RecordPart,
    RecordPartRequest,
    RequestKind,
    ResumeSession,
    ServerProof,
    ServerProtocol,
    ServerState,
    Subscribe,
    Welcome,
)

StateT = TypeVar("StateT", ClientState, ServerState)


CLIENT_SENDS: dict[type[Message] | Pseudo, Callable[[ClientProtocol], None]] = {
    Hello: lambda c: c.send_hello(),
    ProveServer: lambda c: c.prove_server(NONCE),
    Authenticate: lambda c: c.authenticate(USER, PASSWORD, ORG),
    ResumeSession: lambda c: c.resume_session(TOKEN),
    Enrol: lambda c: c.enrol("laptop"),
    CopyRequest: lambda c: c.request_copy(),
    PullRequest: lambda c: c.request_pull(0),
    PushBatch: lambda c: c.push([(1, "a", b"u")]),
    Subscribe: lambda c: c.subscribe(0),
    OutboxReport: lambda c: c.report_outbox(1, 5),
    AuditBatch: lambda c: c.send_audit(SAMPLES[AuditBatch].entries),  # type: ignore[attr-defined]
    RecordPartRequest: lambda c: c.request_part("a", b"\x00"),
    Goodbye: lambda c: c.close(),
    Pseudo.FATAL_ERROR: lambda c: c.reject("internal", "x"),
}

SERVER_SENDS: dict[type[Message] | Pseudo, Callable[[ServerProtocol], None]] = {
    ServerProof: lambda s: s.send_server_proof(SERVER_KEY, SIGNATURE),
    Authenticated: lambda s: s.accept_authentication(TOKEN, 0, USER, ORG),
    Enrolled: lambda s: s.accept_enrolment("r1"),
    CopyBatch: lambda s: s.send_copy_batch(
        [],
        done_records=0,
        total_records=0,
        done_bytes=0,
        total_bytes=0,
        feed_checkpoint=0,
        final=True,
    ),
    PullBatch: lambda s: s.send_pull_batch([], checkpoint=0, head_seq=0),
    PushAck: lambda s: s.ack_push(1),
    AuditAck: lambda s: s.ack_audit(1),
    RecordPart: lambda s: s.send_record_part([b"u"], final=True),
    LiveUpdate: lambda s: s.send_live_update(1, "a", b"u"),
    LiveBatch: lambda s: s.send_live_updates([(1, "a", b"u"), (2, "b", b"v")]),
    HubReport: lambda s: s.send_hub_report(
        [], mark=0 if s.reports_hub_changes else None, whole=True if s.reports_hub_changes else None
    ),
    Error: lambda s: s.refuse(RequestKind.PULL, "busy", "later"),
    Goodbye: lambda s: s.close(),
    Pseudo.FATAL_ERROR: lambda s: s.reject("internal", "x"),
}


def test_every_message_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(MESSAGE_TYPES.values())


def test_tables_mirror_each_other() -> None:
    """What one end may send in some state, the other end may receive in some state."""

    def moves(table: object, direction: Direction) -> set[object]:
        assert isinstance(table, dict) or hasattr(table, "values")
        return {
            key
            for row in table.values()  # type: ignore[attr-defined]
            for (d, key) in row
            if d is direction
        }

    client_sends = moves(CLIENT_TRANSITIONS, Direction.SEND)
    server_receives = moves(SERVER_TRANSITIONS, Direction.RECEIVE)
    server_sends = moves(SERVER_TRANSITIONS, Direction.SEND) | {Welcome}  # Welcome: on Hello
    client_receives = moves(CLIENT_TRANSITIONS, Direction.RECEIVE)
    lost = {Pseudo.CONNECTION_LOST}
    # a non-fatal Error flows only from server to client
    assert client_sends - server_receives == set()
    assert server_receives - client_sends == lost
    assert server_sends - client_receives == set()
    assert client_receives - server_sends == lost
    every_type = set(MESSAGE_TYPES.values())
    assert every_type <= client_sends | client_receives


def test_the_public_api_covers_every_sendable_move() -> None:
    client_sends = {
        k for row in CLIENT_TRANSITIONS.values() for (d, k) in row if d is Direction.SEND
    }
    server_sends = {
        k for row in SERVER_TRANSITIONS.values() for (d, k) in row if d is Direction.SEND
    }
    assert client_sends == set(CLIENT_SENDS)
    assert server_sends == set(SERVER_SENDS)


def _name(key: object) -> str:
    return str(getattr(key, "__name__", key))


def _illegal(
    states: Iterable[StateT], keys: Iterable[object], table: Any, direction: Direction
) -> list[Any]:
    return [
        pytest.param(state, key, id=f"{state.name}-{_name(key)}")
        for state in states
        for key in keys
        if (direction, key) not in table[state]
    ]


@pytest.mark.parametrize(
    ("state", "key"), _illegal(ClientState, CLIENT_SENDS, CLIENT_TRANSITIONS, Direction.SEND)
)
def test_client_illegal_sends(state: ClientState, key: type[Message] | Pseudo) -> None:
    client = client_in(state)
    with pytest.raises(LocalProtocolError):
        CLIENT_SENDS[key](client)
    assert client.state is state
    assert client.data_to_send() == []


@pytest.mark.parametrize(
    ("state", "key"), _illegal(ServerState, SERVER_SENDS, SERVER_TRANSITIONS, Direction.SEND)
)
def test_server_illegal_sends(state: ServerState, key: type[Message] | Pseudo) -> None:
    server = server_in(state)
    with pytest.raises(LocalProtocolError):
        SERVER_SENDS[key](server)
    assert server.state is state
    assert server.data_to_send() == []


def _receive_illegal(proto: ClientProtocol | ServerProtocol, message: Message) -> None:
    state = proto.state
    if proto.close_expected:
        proto.receive_data(frame(message))  # discarded once over
        assert proto.state is state
        assert proto.events_received() == []
        return
    with pytest.raises(RemoteProtocolError):
        proto.receive_data(frame(message))
    assert proto.close_expected
    assert isinstance(proto.failure, RemoteProtocolError)
    assert proto.events_received() == []
    [error] = sent_messages(proto)
    assert isinstance(error, Error)
    assert error.fatal
    assert error.code == "bad_message"


@pytest.mark.parametrize(
    ("state", "cls"), _illegal(ClientState, SAMPLES, CLIENT_TRANSITIONS, Direction.RECEIVE)
)
def test_client_illegal_receives(state: ClientState, cls: type[Message]) -> None:
    _receive_illegal(client_in(state), SAMPLES[cls])


@pytest.mark.parametrize(
    ("state", "cls"), _illegal(ServerState, SAMPLES, SERVER_TRANSITIONS, Direction.RECEIVE)
)
def test_server_illegal_receives(state: ServerState, cls: type[Message]) -> None:
    _receive_illegal(server_in(state), SAMPLES[cls])


# ------------------------------------------------ one outstanding request per kind


def test_second_request_of_a_kind_is_a_local_error() -> None:
    client, _server = ready_pair()
    client.request_pull(0)
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        client.request_pull(5)
    client.request_copy()
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        client.request_copy()
    client.push([(1, "a", b"u")])
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        client.push([(2, "a", b"u")])
    assert len(client.data_to_send()) == 3


def test_second_request_of_a_kind_is_a_remote_error() -> None:
    _client, server = ready_pair()
    server.receive_data(frame(PullRequest(0)))
    with pytest.raises(RemoteProtocolError, match="second PullRequest"):
        server.receive_data(frame(PullRequest(0)))


@pytest.mark.parametrize("cls", [Enrolled, CopyBatch, PullBatch, PushAck])
def test_unsolicited_reply_is_a_remote_error(cls: type[Message]) -> None:
    client, _server = ready_pair()
    with pytest.raises(RemoteProtocolError, match="answers no outstanding"):
        client.receive_data(frame(SAMPLES[cls]))


def test_reply_without_request_is_a_local_error() -> None:
    _client, server = ready_pair()
    for key in (Enrolled, CopyBatch, PullBatch, PushAck):
        with pytest.raises(LocalProtocolError, match="outstanding"):
            SERVER_SENDS[key](server)
    assert server.data_to_send() == []


def test_enrol_twice() -> None:
    client, server = ready_pair()
    with pytest.raises(LocalProtocolError, match="already enrolled"):
        client.enrol()
    with pytest.raises(RemoteProtocolError, match="Enrol from a replica enrolled"):
        server.receive_data(frame(Enrol()))


def test_subscribe_twice() -> None:
    client, server = ready_pair()
    client.subscribe(0)
    with pytest.raises(LocalProtocolError, match="already subscribed"):
        client.subscribe(0)
    server.receive_data(frame(Subscribe(0)))
    with pytest.raises(RemoteProtocolError, match="second Subscribe"):
        server.receive_data(frame(Subscribe(0)))


def test_enrolment_binds_to_the_session_organisation() -> None:
    client, server = ready_pair(enrolled=False)
    client.enrol()
    server.receive_data(client.data_to_send()[0])
    with pytest.raises(LocalProtocolError, match="session's organisation"):
        server.accept_enrolment("r1", "clinic-south")


# --------------------------------------------------- replies must fit requests


def _client_with(request: Callable[[ClientProtocol], None]) -> ClientProtocol:
    client, _server = ready_pair()
    request(client)
    client.data_to_send()
    return client


@pytest.mark.parametrize(
    ("request_", "reply", "match"),
    [
        (
            lambda c: c.request_copy(None, 1),
            CopyBatch((CopyRecord("a", b"u"), CopyRecord("b", b"u")), 2, 2, 2, 2, "b", 0, True),
            "were asked for",
        ),
        (
            lambda c: c.request_copy("m", 5),
            CopyBatch((CopyRecord("a", b"u"),), 1, 1, 1, 1, "a", 0, True),
            "not after 'm'",
        ),
        (
            lambda c: c.request_copy("m", 5),
            CopyBatch((), 0, 0, 0, 0, "z", 0, True),
            "must resume at 'm'",
        ),
        (
            lambda c: c.request_pull(0, 1),
            PullBatch((FeedItem(1, "a", b"u"), FeedItem(2, "a", b"u")), 2, 2),
            "at most 1",
        ),
        (lambda c: c.request_pull(5), PullBatch((FeedItem(5, "a", b"u"),), 5, 5), "not after 5"),
        (lambda c: c.request_pull(5), PullBatch((), 4, 4), "before the request"),
        (lambda c: c.request_pull(5), PullBatch((), 5, 9), "covers no feed entry"),
        (lambda c: c.push([(3, "a", b"u"), (4, "a", b"u")]), PushAck(5), "outside the batch"),
        (lambda c: c.push([(3, "a", b"u"), (4, "a", b"u")]), PushAck(2), "outside the batch"),
        (lambda c: c.enrol(), Enrolled("r1", "server-z", ORG), "Welcome came from"),
        (lambda c: c.enrol(), Enrolled("r1", SERVER_ID, "clinic-south"), "session is in"),
    ],
)
def test_client_refuses_replies_that_do_not_fit(
    request_: Callable[[ClientProtocol], None], reply: Message, match: str
) -> None:
    client = ClientProtocol()
    server = ServerProtocol(SERVER_ID)
    from tests.protocol.session import handshake

    handshake(client, server)
    if not isinstance(reply, Enrolled):
        client.enrol()
        client.receive_data(frame(Enrolled("r0", SERVER_ID, ORG)))
    request_(client)
    client.data_to_send()
    with pytest.raises(RemoteProtocolError, match=match):
        client.receive_data(frame(reply))


def test_live_updates_only_after_subscribe_and_in_order() -> None:
    client = _client_with(lambda c: None)
    with pytest.raises(RemoteProtocolError, match="before Subscribe"):
        client.receive_data(frame(LiveUpdate(1, "a", b"u")))
    client = _client_with(lambda c: c.subscribe(10))
    with pytest.raises(RemoteProtocolError, match="not after"):
        client.receive_data(frame(LiveUpdate(10, "a", b"u")))
    client = _client_with(lambda c: c.subscribe(10))
    client.receive_data(frame(LiveUpdate(12, "a", b"u")))
    with pytest.raises(RemoteProtocolError, match="not after"):
        client.receive_data(frame(LiveUpdate(11, "a", b"u")))


def test_server_refuses_to_send_replies_that_do_not_fit() -> None:
    client, server = ready_pair()
    client.request_copy("m", 1)
    client.request_pull(5, 1)
    client.push([(3, "a", b"u")])
    for f in client.data_to_send():
        server.receive_data(f)
    copy_kwargs = {
        "done_records": 2,
        "total_records": 2,
        "done_bytes": 2,
        "total_bytes": 2,
        "feed_checkpoint": 0,
        "final": True,
    }
    with pytest.raises(LocalProtocolError, match="at most 1"):
        server.send_copy_batch([("n", b"u"), ("o", b"u")], **copy_kwargs)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="after 'm'"):
        server.send_copy_batch([("a", b"u")], **copy_kwargs)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="at most 1"):
        server.send_pull_batch([(6, "a", b"u"), (7, "a", b"u")], checkpoint=7, head_seq=7)
    with pytest.raises(LocalProtocolError, match="after seq 5"):
        server.send_pull_batch([(5, "a", b"u")], checkpoint=5, head_seq=5)
    with pytest.raises(LocalProtocolError, match="before the request"):
        server.send_pull_batch([], checkpoint=4, head_seq=4)
    with pytest.raises(LocalProtocolError, match="covers at least one"):
        server.send_pull_batch([], checkpoint=5, head_seq=9)
    with pytest.raises(LocalProtocolError, match="outside the batch"):
        server.ack_push(4)
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        server.send_live_update(1, "a", b"u")
    server.receive_data(frame(Subscribe(10)))
    with pytest.raises(LocalProtocolError, match="not after"):
        server.send_live_update(10, "a", b"u")
    assert server.data_to_send() == []
    assert set(server.outstanding) == {RequestKind.COPY, RequestKind.PULL, RequestKind.PUSH}


def test_bad_constructor_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        ClientProtocol(protocol_versions=(90,))
    with pytest.raises(LocalProtocolError):
        ClientProtocol(protocol_versions=())
    with pytest.raises(LocalProtocolError):
        ClientProtocol(replica_id="r1")  # without its server
    with pytest.raises(LocalProtocolError):
        ClientProtocol(replica_id="r1", server_id=SERVER_ID)  # without its organisation
    with pytest.raises(LocalProtocolError):
        ClientProtocol(organisation=ORG)
    with pytest.raises(LocalProtocolError):
        ClientProtocol(max_frame_bytes=10)
    with pytest.raises(LocalProtocolError):
        ServerProtocol("")
    with pytest.raises(LocalProtocolError):
        ServerProtocol(SERVER_ID, protocol_versions=(90,))
    with pytest.raises(LocalProtocolError):
        ServerProtocol(SERVER_ID, max_frame_bytes=True)


def test_close_before_hello_sends_nothing() -> None:
    client = ClientProtocol()
    client.close()
    assert client.state is ClientState.CLOSED
    assert client.data_to_send() == []
