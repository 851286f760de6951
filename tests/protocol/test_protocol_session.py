"""Whole sessions, both ends driven by hand: the flows of docs/protocol.md."""

from __future__ import annotations

import msgpack
import pytest
from tests.protocol.session import (
    NONCE,
    ORG,
    PASSWORD,
    REPLICA_ID,
    SERVER_ID,
    SERVER_KEY,
    SIGNATURE,
    TOKEN,
    USER,
    enrolled_client,
    frame,
    handshake,
    prove,
    pump,
    ready_pair,
    sent_messages,
)

from caresync.exceptions import (
    AuthenticationError,
    ConnectionLostError,
    FrameTooLargeError,
    LocalProtocolError,
    NotEnrolledError,
    ProtocolError,
    RemoteProtocolError,
    ReplicaRevokedError,
    SyncRefusedError,
    WrongOrganisationError,
    WrongServerError,
)
from caresync.protocol import (
    MIN_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    AccountName,
    Authenticate,
    Authenticated,
    ClientProtocol,
    ClientState,
    CopyBatch,
    CopyRecord,
    CopyRequest,
    Enrol,
    Enrolled,
    Error,
    ErrorCode,
    FeedItem,
    Goodbye,
    Hello,
    LiveUpdate,
    PullBatch,
    PullRequest,
    PushAck,
    PushBatch,
    PushItem,
    RequestKind,
    ResumeSession,
    ServerProof,
    ServerProtocol,
    ServerState,
    Subscribe,
    Welcome,
    decode_frame,
)

RECORDS = [(f"rec-{i:02d}", f"update-{i}".encode()) for i in range(7)]
TOTAL_BYTES = sum(len(update) for _, update in RECORDS)


class FakeServerStore:
    """Just enough of a server to answer copy, pull and push (a list and a dict)."""

    def __init__(self) -> None:
        self.records = dict(RECORDS)
        self.feed: list[FeedItem] = [
            FeedItem(i + 1, rid, upd) for i, (rid, upd) in enumerate(RECORDS)
        ]
        self.pushed: dict[tuple[str, int], bytes] = {}

    def answer_copy(self, server: ServerProtocol, request: CopyRequest) -> None:
        ids = sorted(self.records)
        after = request.after_record_id
        rest = [rid for rid in ids if after is None or rid > after]
        chosen = rest[: request.batch_records]
        last = chosen[-1] if chosen else after
        done = [rid for rid in ids if last is not None and rid <= last]
        server.send_copy_batch(
            [(rid, self.records[rid]) for rid in chosen],
            done_records=len(done),
            total_records=len(ids),
            done_bytes=sum(len(self.records[rid]) for rid in done),
            total_bytes=sum(len(u) for u in self.records.values()),
            feed_checkpoint=len(self.feed),
            final=len(rest) <= request.batch_records,
        )

    def answer_pull(self, server: ServerProtocol, request: PullRequest) -> None:
        items = [item for item in self.feed if item.seq > request.after_seq][: request.limit]
        checkpoint = items[-1].seq if items else max(request.after_seq, len(self.feed))
        server.send_pull_batch(items, checkpoint=checkpoint, head_seq=len(self.feed))

    def commit_push(self, server: ServerProtocol, batch: PushBatch) -> None:
        assert server.replica_id is not None
        for item in batch.items:
            key = (server.replica_id, item.local_seq)
            if key not in self.pushed:  # a resent batch changes nothing
                self.pushed[key] = item.update
                self.feed.append(FeedItem(len(self.feed) + 1, item.record_id, item.update))
        server.ack_push()


def test_full_session_enrol_copy_resume_pull_push_live() -> None:
    store = FakeServerStore()

    # --- connection 1: a new laptop enrols and starts its first copy
    client = ClientProtocol()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    assert pump(client, server) == 1
    [hello] = server.events_received()
    assert isinstance(hello, Hello)
    assert hello.replica_id is None
    assert server.state is ServerState.WELCOMED
    pump(server, client)
    [welcome] = client.events_received()
    assert welcome == Welcome(PROTOCOL_VERSION, SERVER_ID, server.max_frame_bytes)
    assert client.state is ClientState.WELCOMED
    assert client.server_id == SERVER_ID

    prove(client, server)
    client.authenticate(USER, PASSWORD, ORG)
    pump(client, server)
    [auth] = server.events_received()
    assert auth == Authenticate(USER, PASSWORD, ORG)
    assert server.state is ServerState.AUTHENTICATING
    server.accept_authentication(TOKEN, 1_900_000_000_000, USER, ORG)
    pump(server, client)
    [session] = client.events_received()
    assert isinstance(session, Authenticated)
    assert client.session == session
    assert client.state is ClientState.READY

    with pytest.raises(LocalProtocolError, match="enrol first"):
        client.request_copy()
    client.enrol("ward-laptop-3")
    pump(client, server)
    [enrol] = server.events_received()
    assert enrol == Enrol("ward-laptop-3", None)
    server.accept_enrolment(REPLICA_ID)
    pump(server, client)
    [enrolled] = client.events_received()
    assert enrolled == Enrolled(REPLICA_ID, SERVER_ID, ORG)
    assert client.enrolled
    assert client.replica_id == REPLICA_ID
    assert client.organisation == ORG

    # first copy, 3 records a batch: two batches arrive, then the connection drops
    committed: dict[str, bytes] = {}
    resume_at: str | None = None
    first_checkpoint: int | None = None
    progress = []
    for _ in range(2):
        client.request_copy(resume_at, batch_records=3)
        pump(client, server)
        [request] = server.events_received()
        assert isinstance(request, CopyRequest)
        store.answer_copy(server, request)
        pump(server, client)
        [batch] = client.events_received()
        assert isinstance(batch, CopyBatch)
        assert not batch.final
        committed.update(batch.records)
        resume_at = batch.last_record_id
        first_checkpoint = batch.feed_checkpoint if first_checkpoint is None else first_checkpoint
        progress.append((batch.done_records, batch.total_records, batch.done_bytes))
    assert progress[0][:2] == (3, 7)
    assert progress[1][:2] == (6, 7)
    assert resume_at == "rec-05"
    client.request_copy(resume_at, batch_records=3)  # in flight when the line drops
    client.connection_lost()
    server.connection_lost()
    assert client.state is ClientState.FAILED
    assert isinstance(client.failure, ConnectionLostError)
    assert RequestKind.COPY in client.outstanding

    # --- connection 2: the now enrolled replica resumes the copy where it stopped
    client, server = handshake(enrolled_client(), ServerProtocol(SERVER_ID))
    client.request_copy(resume_at, batch_records=3)
    pump(client, server)
    [request] = server.events_received()
    assert request == CopyRequest("rec-05", 3)
    store.answer_copy(server, request)
    pump(server, client)
    [batch] = client.events_received()
    assert isinstance(batch, CopyBatch)
    assert batch.final
    assert [r.record_id for r in batch.records] == ["rec-06"]
    assert (batch.done_records, batch.total_records) == (7, 7)
    assert batch.done_bytes == batch.total_bytes == TOTAL_BYTES
    committed.update(batch.records)
    assert committed == dict(RECORDS)

    # pull from the first batch's checkpoint: nothing new, then someone else writes
    assert first_checkpoint == 7
    store.feed.append(FeedItem(8, "rec-01", b"edit-a"))
    store.feed.append(FeedItem(9, "rec-02", b"edit-b"))
    checkpoint = first_checkpoint
    pulled: list[FeedItem] = []
    while True:
        client.request_pull(checkpoint, limit=1)
        pump(client, server)
        [pull] = server.events_received()
        assert isinstance(pull, PullRequest)
        store.answer_pull(server, pull)
        pump(server, client)
        [pull_batch] = client.events_received()
        assert isinstance(pull_batch, PullBatch)
        pulled.extend(pull_batch.items)
        checkpoint = pull_batch.checkpoint
        if not pull_batch.more:
            break
    assert [item.seq for item in pulled] == [8, 9]
    assert checkpoint == 9

    # push two outbox entries; the ack comes only after the commit
    outbox = [PushItem(1, "rec-03", b"mine-1"), PushItem(2, "rec-04", b"mine-2")]
    client.push(outbox)
    pump(client, server)
    [push] = server.events_received()
    assert isinstance(push, PushBatch)
    assert push.items == tuple(outbox)
    assert server.data_to_send() == []  # nothing acknowledged before the commit
    store.commit_push(server, push)
    pump(server, client)
    [ack] = client.events_received()
    assert ack == PushAck(2)
    assert RequestKind.PUSH not in client.outstanding
    feed_after_push = len(store.feed)

    # the ack was lost on a crash? the batch is sent again: harmless
    client.push(outbox)
    pump(client, server)
    [again] = server.events_received()
    store.commit_push(server, again)  # type: ignore[arg-type]
    pump(server, client)
    assert client.events_received() == [PushAck(2)]
    assert len(store.feed) == feed_after_push
    assert len(store.pushed) == 2

    # live: subscribe after the checkpoint; new entries are forwarded in order
    client.subscribe(checkpoint)
    pump(client, server)
    assert server.events_received() == [Subscribe(9)]
    assert server.subscribed
    assert server.live_seq == 9
    for item in store.feed[9:]:
        server.send_live_update(*item)
    server.send_live_update(12, "rec-00", b"other-laptop")
    pump(server, client)
    live = client.events_received()
    assert [e.seq for e in live if isinstance(e, LiveUpdate)] == [10, 11, 12]
    assert client.live_seq == 12

    # goodbye
    client.close("done")
    assert client.state is ClientState.CLOSED
    assert client.close_expected
    pump(client, server)
    assert server.events_received() == [Goodbye("done")]
    assert server.state is ServerState.CLOSED
    assert server.failure is None


def test_requests_of_different_kinds_run_at_once() -> None:
    client, server = ready_pair()
    client.request_copy(None, 10)
    client.request_pull(0, 10)
    client.push([(1, "r", b"u")])
    pump(client, server)
    events = server.events_received()
    assert [type(e) for e in events] == [CopyRequest, PullRequest, PushBatch]
    assert set(server.outstanding) == {RequestKind.COPY, RequestKind.PULL, RequestKind.PUSH}
    # answered in another order than asked
    server.ack_push()
    server.send_pull_batch([], checkpoint=0, head_seq=0)
    server.send_copy_batch(
        [],
        done_records=0,
        total_records=0,
        done_bytes=0,
        total_bytes=0,
        feed_checkpoint=0,
        final=True,
    )
    pump(server, client)
    assert [type(e) for e in client.events_received()] == [PushAck, PullBatch, CopyBatch]
    assert not client.outstanding
    assert not server.outstanding


def test_resume_session_with_token() -> None:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    pump(server, client)
    prove(client, server)
    client.resume_session(TOKEN)
    pump(client, server)
    assert server.events_received()[-1] == ResumeSession(TOKEN)
    assert server.credentials == ResumeSession(TOKEN)
    server.accept_authentication("tok-new", 5, USER, ORG)
    pump(server, client)
    assert client.state is ClientState.READY
    assert client.session is not None
    assert client.session.session_token == "tok-new"


def test_session_expired_is_an_authentication_error() -> None:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    pump(server, client)
    prove(client, server)
    client.resume_session("stale")
    pump(client, server)
    server.reject(ErrorCode.SESSION_EXPIRED, "log in again")
    assert server.state is ServerState.FAILED
    assert isinstance(server.failure, AuthenticationError)
    with pytest.raises(AuthenticationError, match="session_expired: log in again"):
        pump(server, client)
    assert client.state is ClientState.FAILED
    assert client.peer_error is not None
    assert client.peer_error.code == "session_expired"


# ------------------------------------------------------------------- refusals


def test_bad_credentials() -> None:
    client = ClientProtocol()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    pump(server, client)
    prove(client, server)
    client.authenticate(USER, "wrong", ORG)
    pump(client, server)
    server.reject(ErrorCode.BAD_CREDENTIALS, "bad user name or password")
    assert server.close_expected
    with pytest.raises(AuthenticationError, match="bad_credentials"):
        pump(server, client)
    assert client.state is ClientState.FAILED
    assert client.close_expected
    assert client.data_to_send() == []


def test_wrong_server_refused_by_the_server() -> None:
    client = enrolled_client()  # enrolled to server-a
    server = ServerProtocol("server-b")
    client.send_hello()
    with pytest.raises(WrongServerError) as raised:
        pump(client, server)
    assert "server-a" in str(raised.value)
    assert "server-b" in str(raised.value)
    assert server.state is ServerState.FAILED
    assert server.hello is None
    assert server.events_received() == []
    [reply] = server.data_to_send()  # no Welcome: only the refusal
    _version, error = decode_frame(reply)
    assert isinstance(error, Error)
    assert error.code == "wrong_server"
    assert error.fatal
    assert dict(error.detail) == {"expected": "server-a", "actual": "server-b"}
    with pytest.raises(WrongServerError) as on_client:
        client.receive_data(reply)
    assert "server-a" in str(on_client.value)
    assert "server-b" in str(on_client.value)
    assert client.state is ClientState.FAILED
    assert client.failure is on_client.value


def test_wrong_server_refused_by_the_client_before_anything_moves() -> None:
    client = enrolled_client()
    client.send_hello()
    client.data_to_send()
    # an impostor (or a server that does not check) welcomes the replica
    with pytest.raises(WrongServerError) as raised:
        client.receive_data(frame(Welcome(PROTOCOL_VERSION, "server-b")))
    assert "server-a" in str(raised.value)
    assert "server-b" in str(raised.value)
    assert client.state is ClientState.FAILED
    assert client.data_to_send() == []  # not even an Error goes to a stranger
    assert client.events_received() == []
    assert client.server_id is None
    with pytest.raises(LocalProtocolError):
        client.authenticate(USER, PASSWORD, ORG)  # credentials can never follow


def test_credentials_only_after_welcome() -> None:
    client = ClientProtocol()
    with pytest.raises(LocalProtocolError):
        client.authenticate(USER, PASSWORD, ORG)
    client.send_hello()
    with pytest.raises(LocalProtocolError):
        client.authenticate(USER, PASSWORD, ORG)
    assert len(client.data_to_send()) == 1  # just the Hello


def test_wrong_organisation_refused_by_the_client_locally() -> None:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    pump(server, client)
    with pytest.raises(WrongOrganisationError, match="clinic-south"):
        client.authenticate(USER, PASSWORD, "clinic-south")
    assert client.state is ClientState.WELCOMED
    assert client.data_to_send() == []


def test_wrong_organisation_refused_by_the_server() -> None:
    server = ServerProtocol(SERVER_ID)
    server.receive_data(
        frame(Hello(SUPPORTED_VERSIONS, MIN_MAX_FRAME_BYTES, REPLICA_ID, SERVER_ID, ORG))
    )
    server.data_to_send()
    with pytest.raises(WrongOrganisationError) as raised:
        server.receive_data(frame(Authenticate(USER, PASSWORD, "clinic-south")))
    assert ORG in str(raised.value)
    assert "clinic-south" in str(raised.value)
    [error] = sent_messages(server)
    assert isinstance(error, Error)
    assert error.code == "wrong_organisation"
    assert server.events_received() == [
        Hello(SUPPORTED_VERSIONS, MIN_MAX_FRAME_BYTES, REPLICA_ID, SERVER_ID, ORG)
    ]


def test_wrong_organisation_in_authenticated_refused_by_the_client() -> None:
    client = enrolled_client()
    client.send_hello()
    client.data_to_send()
    client.receive_data(frame(Welcome(PROTOCOL_VERSION, SERVER_ID)))
    client.prove_server(NONCE)
    client.receive_data(frame(ServerProof(SERVER_KEY, SIGNATURE)))
    client.confirm_server()
    client.authenticate(USER, PASSWORD, ORG)
    client.data_to_send()
    with pytest.raises(WrongOrganisationError):
        client.receive_data(frame(Authenticated(TOKEN, 0, USER, "clinic-south")))
    [error] = sent_messages(client)
    assert isinstance(error, Error)
    assert error.code == "wrong_organisation"
    assert client.session is None


def test_server_accepting_another_organisation_is_a_local_error() -> None:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    pump(server, client)
    prove(client, server)
    client.authenticate(USER, PASSWORD, ORG)
    pump(client, server)
    with pytest.raises(LocalProtocolError, match="wrong_organisation"):
        server.accept_authentication(TOKEN, 0, USER, "clinic-south")
    assert server.state is ServerState.AUTHENTICATING


def test_revoked_replica() -> None:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    [hello] = server.events_received()
    assert isinstance(hello, Hello)
    server.reject(ErrorCode.REVOKED, f"replica {hello.replica_id} was revoked")
    pump_welcome_then_error = server.data_to_send()
    client.receive_data(pump_welcome_then_error[0])
    with pytest.raises(ReplicaRevokedError, match="revoked"):
        client.receive_data(pump_welcome_then_error[1])
    assert client.state is ClientState.FAILED


def test_version_mismatch_refused_by_the_server() -> None:
    server = ServerProtocol(SERVER_ID)
    with pytest.raises(SyncRefusedError, match="no protocol version in common") as raised:
        server.receive_data(frame(Hello((90, 91)), version=90))
    assert not isinstance(raised.value, ProtocolError)
    [error] = sent_messages(server)
    assert isinstance(error, Error)
    assert error.code == "unsupported_version"
    assert dict(error.detail) == {
        "client_versions": "90, 91",
        "server_versions": ", ".join(map(str, SUPPORTED_VERSIONS)),
    }
    # the client side of such a refusal: a SyncRefusedError, whatever the frame's version
    client = ClientProtocol()
    client.send_hello()
    with pytest.raises(SyncRefusedError, match="unsupported_version"):
        client.receive_data(frame(error, version=1))


def test_version_negotiation_picks_the_highest_common() -> None:
    server = ServerProtocol(SERVER_ID)
    server.receive_data(frame(Hello((1, 90, 91)), version=91))  # Hello's layout is frozen
    [welcome] = sent_messages(server)
    assert welcome == Welcome(1, SERVER_ID, server.max_frame_bytes)
    assert server.protocol_version == 1


def test_client_refuses_a_version_it_did_not_offer() -> None:
    client = ClientProtocol(protocol_versions=(1,))
    client.send_hello()
    client.data_to_send()
    with pytest.raises(RemoteProtocolError, match="did not offer"):
        client.receive_data(frame(Welcome(2, SERVER_ID), version=2))
    [error] = sent_messages(client)
    assert isinstance(error, Error)
    assert error.code == "bad_message"


def test_frames_after_agreement_must_carry_the_agreed_version() -> None:
    _client, server = ready_pair()
    with pytest.raises(RemoteProtocolError, match="version"):
        server.receive_data(frame(Goodbye(), version=1))


def test_copy_before_enrolment_is_refused_not_enrolled() -> None:
    client, server = ready_pair(enrolled=False)
    with pytest.raises(RemoteProtocolError, match="not enrolled"):
        server.receive_data(frame(CopyRequest()))
    [error] = sent_messages(server)
    assert isinstance(error, Error)
    assert error.code == "not_enrolled"
    with pytest.raises(NotEnrolledError):
        client.receive_data(frame(error))


def test_non_fatal_refusal_keeps_the_connection() -> None:
    client, server = ready_pair()
    client.push([(1, "rec-x", b"u")])
    pump(client, server)
    server.events_received()
    server.refuse(RequestKind.PUSH, ErrorCode.FORBIDDEN, "record rec-x is not yours")
    pump(server, client)
    [error] = client.events_received()
    assert isinstance(error, Error)
    assert not error.fatal
    assert error.in_reply_to == PushBatch.TYPE_CODE
    assert client.state is ClientState.READY
    assert not client.outstanding
    assert server.state is ServerState.READY
    assert not server.outstanding
    client.push([(2, "rec-y", b"u")])  # the next push is allowed
    pump(client, server)
    assert isinstance(server.events_received()[0], PushBatch)


def test_refusing_a_request_not_outstanding_is_a_local_error() -> None:
    _client, server = ready_pair()
    with pytest.raises(LocalProtocolError):
        server.refuse(RequestKind.PULL, ErrorCode.BUSY, "later")


def test_non_fatal_error_for_no_request_is_a_remote_error() -> None:
    client, _server = ready_pair()
    with pytest.raises(RemoteProtocolError):
        client.receive_data(frame(Error("busy", "x", False, in_reply_to=PullRequest.TYPE_CODE)))


def test_server_error_codes_reach_the_client_as_exceptions() -> None:
    for code, exc_type in [
        (ErrorCode.INTERNAL, ConnectionLostError),
        (ErrorCode.GOING_AWAY, ConnectionLostError),
        (ErrorCode.FORBIDDEN, SyncRefusedError),
        ("from_the_future", SyncRefusedError),
    ]:
        client, server = ready_pair()
        server.reject(code, "sorry")
        with pytest.raises(exc_type, match=str(code)):
            pump(server, client)
        assert client.state is ClientState.FAILED
        assert client.close_expected


# -------------------------------------------------------- malformed input


def test_malformed_frame_fails_the_connection_and_tells_the_peer() -> None:
    client, server = ready_pair()
    with pytest.raises(RemoteProtocolError):
        server.receive_data(b"\xc1 definitely not msgpack")
    assert server.state is ServerState.FAILED
    assert isinstance(server.failure, RemoteProtocolError)
    [error] = sent_messages(server)
    assert isinstance(error, Error)
    assert error.code == "bad_message"
    assert error.fatal
    # the client learns it broke the protocol (as the server saw it)
    with pytest.raises(ProtocolError, match="bad_message"):
        client.receive_data(frame(error))
    assert client.state is ClientState.FAILED


def test_oversize_frame() -> None:
    server = ServerProtocol(SERVER_ID, max_frame_bytes=MIN_MAX_FRAME_BYTES)
    with pytest.raises(FrameTooLargeError):
        server.receive_data(b"\x00" * (MIN_MAX_FRAME_BYTES + 1))
    [error] = sent_messages(server)
    assert isinstance(error, Error)
    assert error.code == "too_large"


def test_oversize_valid_message_is_refused_before_decoding() -> None:
    _client, server = ready_pair()
    big = ServerProtocol(SERVER_ID, max_frame_bytes=MIN_MAX_FRAME_BYTES)
    handshake(enrolled_client(), big)
    payload = frame(PushBatch((PushItem(1, "r", b"x" * MIN_MAX_FRAME_BYTES),)))
    with pytest.raises(FrameTooLargeError):
        big.receive_data(payload)
    server.receive_data(payload)  # the default 16 MiB limit takes it
    assert isinstance(server.events_received()[0], PushBatch)


def test_unknown_message_type() -> None:
    import msgpack

    _client, server = ready_pair()
    with pytest.raises(RemoteProtocolError, match="unknown message type 99"):
        server.receive_data(msgpack.packb([1, 99, {}]))


def test_text_frame_is_refused() -> None:
    _client, server = ready_pair()
    with pytest.raises(RemoteProtocolError, match="text frame"):
        server.receive_data("hello")


def test_frames_after_close_are_discarded() -> None:
    client, server = ready_pair()
    server.close("maintenance")
    client.request_pull(0)  # crosses the Goodbye on the wire
    pump(client, server)
    assert server.events_received() == []
    assert server.state is ServerState.CLOSED
    server.receive_data(b"garbage")  # discarded, not raised
    pump(server, client)
    assert client.events_received() == [Goodbye("maintenance")]
    assert client.state is ClientState.CLOSED


def test_connection_lost_keeps_what_was_outstanding() -> None:
    client, server = ready_pair()
    client.push([(1, "r", b"u")])
    pump(client, server)
    server.events_received()
    client.connection_lost()
    server.connection_lost()
    assert isinstance(client.failure, ConnectionLostError)
    assert "push" in str(client.failure)
    assert isinstance(client.outstanding[RequestKind.PUSH], PushBatch)
    assert server.state is ServerState.FAILED
    client.connection_lost()  # idempotent
    with pytest.raises(LocalProtocolError):
        server.ack_push()  # no ack after the connection is gone


def test_batch_too_large_for_the_peer_is_a_local_error_and_queues_nothing() -> None:
    client = enrolled_client(max_frame_bytes=MIN_MAX_FRAME_BYTES)
    client, server = handshake(client, ServerProtocol(SERVER_ID))
    client.request_copy(None, 10)
    pump(client, server)
    with pytest.raises(LocalProtocolError, match="exceeds the peer's maximum"):
        server.send_copy_batch(
            [("r1", b"x" * MIN_MAX_FRAME_BYTES)],
            done_records=1,
            total_records=1,
            done_bytes=MIN_MAX_FRAME_BYTES,
            total_bytes=MIN_MAX_FRAME_BYTES,
            feed_checkpoint=0,
            final=True,
        )
    assert server.data_to_send() == []
    assert RequestKind.COPY in server.outstanding
    server.send_copy_batch(  # a smaller batch still goes
        [("r1", b"x" * 1000)],
        done_records=1,
        total_records=2,
        done_bytes=1000,
        total_bytes=MIN_MAX_FRAME_BYTES,
        feed_checkpoint=0,
        final=False,
    )
    pump(server, client)
    assert isinstance(client.events_received()[0], CopyBatch)


def test_password_never_appears_in_errors_or_reprs() -> None:
    message = Authenticate(USER, "s3cret-pw", ORG)
    assert "s3cret-pw" not in repr(message)
    with pytest.raises(LocalProtocolError) as raised:
        Authenticate(USER, "x" * 5000, ORG)
    assert "xxxx" not in str(raised.value)
    assert TOKEN not in repr(Authenticated(TOKEN, 0, USER, ORG))
    assert TOKEN not in repr(ResumeSession(TOKEN))


def test_copy_with_a_plain_record_list_and_no_more_records() -> None:
    client, server = ready_pair()
    client.request_copy("zzz", 5)
    pump(client, server)
    server.send_copy_batch(
        [],
        done_records=3,
        total_records=3,
        done_bytes=10,
        total_bytes=10,
        feed_checkpoint=4,
        final=True,
    )
    pump(server, client)
    [batch] = client.events_received()
    assert isinstance(batch, CopyBatch)
    assert batch.last_record_id == "zzz"
    assert batch.final
    assert batch.records == ()
    assert CopyRecord("a", b"1") == ("a", b"1")


def test_errors_sent_lists_each_error_queued_once() -> None:
    server = ServerProtocol(SERVER_ID)
    with pytest.raises(SyncRefusedError):
        server.receive_data(frame(Hello((90, 91)), version=90))
    [error] = server.errors_sent()
    assert error.code == "unsupported_version"
    assert error.fatal
    assert server.errors_sent() == []  # taken once
    assert [type(m) for m in sent_messages(server)] == [Error]  # and still sent
    fresh = ServerProtocol(SERVER_ID)
    with pytest.raises(ProtocolError):
        fresh.receive_data(b"\x00not a frame")
    assert [e.code for e in fresh.errors_sent()] == ["bad_message"]


def test_the_organisations_account_names_reach_a_version_6_client_only() -> None:
    names = (AccountName("dr.a", "Dr Aïcha Diallo"), AccountName("dr.b", "dr.b"))
    for versions, expected in (((4, 5, 6), names), ((4, 5), None)):
        client = enrolled_client(protocol_versions=versions)
        server = ServerProtocol(SERVER_ID)
        client.send_hello()
        pump(client, server)
        server.events_received()
        pump(server, client)
        client.events_received()
        prove(client, server)
        client.authenticate(USER, PASSWORD, ORG)
        pump(client, server)
        server.events_received()
        server.accept_authentication(TOKEN, 1_900_000_000_000, USER, ORG, accounts=names)
        pump(server, client)
        [session] = [e for e in client.events_received() if isinstance(e, Authenticated)]
        assert session.accounts == expected


@pytest.mark.parametrize(
    "accounts",
    [
        (("dr.b", "B"), ("dr.a", "A")),  # not in username order
        (("dr.a", "A"), ("dr.a", "A again")),  # twice
        (("dr.a",),),  # not a pair
        (("dr.a", ""),),  # an empty display name
        (("dr.a", "two\nlines"),),
        "dr.a",
    ],
)
def test_account_names_that_break_the_rules_are_refused(accounts: object) -> None:
    with pytest.raises(LocalProtocolError):
        Authenticated(TOKEN, 0, USER, ORG, accounts=accounts)  # type: ignore[arg-type]
    # From the wire, the same is the peer's fault.
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    server.events_received()
    pump(server, client)
    client.events_received()
    prove(client, server)
    client.authenticate(USER, PASSWORD, ORG)
    body = {
        "session_token": TOKEN,
        "expires_at_ms": 0,
        "user": USER,
        "organisation": ORG,
        "pushed_up_to": None,
        "replica_secret": None,
        "accounts": accounts,
    }
    hostile = msgpack.packb([PROTOCOL_VERSION, Authenticated.TYPE_CODE, body], use_bin_type=True)
    with pytest.raises(RemoteProtocolError):
        client.receive_data(hostile)
