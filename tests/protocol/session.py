"""Drive a ClientProtocol and a ServerProtocol by hand, passing frames between them."""

from __future__ import annotations

from typing import Any

from caresync.audit import GENESIS, AuditEvent, link
from caresync.protocol import (
    PROTOCOL_VERSION,
    AuditAck,
    AuditBatch,
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
    FeedItem,
    Goodbye,
    Hello,
    HubReport,
    LiveBatch,
    LiveUpdate,
    Message,
    OutboxReport,
    ProveServer,
    PullBatch,
    PullRequest,
    PushAck,
    PushBatch,
    PushItem,
    RecordPart,
    RecordPartRequest,
    ResumeSession,
    ServerProof,
    ServerProtocol,
    ServerState,
    Subscribe,
    SyncProtocol,
    Welcome,
    decode_frame,
    encode_frame,
)

SERVER_ID = "server-a"
ORG = "clinic-north"
REPLICA_ID = "replica-1"
USER = "ann"
PASSWORD = "correct horse"
TOKEN = "tok-123"
NONCE = b"n" * 32
SERVER_KEY = b"k" * 32
SIGNATURE = b"s" * 64  # the protocol carries it; checking it is the shell's work

SAMPLES: dict[type[Message], Message] = {
    Hello: Hello((1,)),
    Welcome: Welcome(1, SERVER_ID),
    ProveServer: ProveServer(NONCE),
    ServerProof: ServerProof(SERVER_KEY, SIGNATURE),
    Authenticate: Authenticate(USER, PASSWORD, ORG),
    ResumeSession: ResumeSession(TOKEN),
    Authenticated: Authenticated(TOKEN, 0, USER, ORG),
    Enrol: Enrol("laptop"),
    Enrolled: Enrolled("r1", SERVER_ID, ORG),
    CopyRequest: CopyRequest(),
    CopyBatch: CopyBatch((CopyRecord("a", b"u"),), 1, 1, 1, 1, "a", 0, True),
    PullRequest: PullRequest(0),
    PullBatch: PullBatch((FeedItem(1, "a", b"u"),), 1, 1),
    PushBatch: PushBatch((PushItem(1, "a", b"u"),)),
    PushAck: PushAck(1),
    Subscribe: Subscribe(0),
    LiveUpdate: LiveUpdate(1, "a", b"u"),
    LiveBatch: LiveBatch(((1, "a", b"u"), (2, "b", b"v"))),
    HubReport: HubReport(
        (("a", "sent", 3, None, 1700000000000), ("b", "held", 5, "why", None)), True, 7, True
    ),
    OutboxReport: OutboxReport(3, 1_700_000_000_000),
    AuditBatch: AuditBatch(
        (
            link(
                AuditEvent(USER, "read", "a"),
                replica_id=REPLICA_ID,
                seq=1,
                at_ms=1,
                prev_hash=GENESIS,
            ),
        )
    ),
    AuditAck: AuditAck(1),
    RecordPartRequest: RecordPartRequest("a", b"\x00"),
    RecordPart: RecordPart("a", (b"u",), True),
    Error: Error("busy", "later", False, in_reply_to=PullRequest.TYPE_CODE),
    Goodbye: Goodbye("bye"),
}
"""One valid message of every type."""


def pump(src: SyncProtocol[Any, Any], dst: SyncProtocol[Any, Any]) -> int:
    """Deliver every frame ``src`` queued to ``dst``; return how many."""
    frames = src.data_to_send()
    for frame in frames:
        dst.receive_data(frame)
    return len(frames)


def sent_messages(proto: SyncProtocol[Any, Any]) -> list[Message]:
    """Decode (and drain) the frames ``proto`` queued."""
    return [decode_frame(frame)[1] for frame in proto.data_to_send()]


def frame(message: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """A frame for ``message``, as any peer (well-behaved or not) could send it."""
    return encode_frame(message, version=version)


def enrolled_client(**kwargs: Any) -> ClientProtocol:
    """A client for a replica enrolled to SERVER_ID in ORG."""
    return ClientProtocol(replica_id=REPLICA_ID, server_id=SERVER_ID, organisation=ORG, **kwargs)


def handshake(
    client: ClientProtocol, server: ServerProtocol, *, organisation: str = ORG
) -> tuple[ClientProtocol, ServerProtocol]:
    """Hello, Welcome, ProveServer, ServerProof, Authenticate, Authenticated: both READY."""
    client.send_hello()
    pump(client, server)
    server.events_received()
    pump(server, client)
    client.events_received()
    prove(client, server)
    client.authenticate(USER, PASSWORD, organisation)
    pump(client, server)
    server.events_received()
    server.accept_authentication(TOKEN, 1_900_000_000_000, USER, organisation)
    pump(server, client)
    client.events_received()
    assert client.state is ClientState.READY
    assert server.state is ServerState.READY
    return client, server


def prove(client: ClientProtocol, server: ServerProtocol) -> None:
    """ProveServer, ServerProof, and the client's shell confirming it (version 4 on;
    an older version has no proof, and this does nothing)."""
    if (client.protocol_version or 0) < ProveServer.SINCE_VERSION:
        return
    client.prove_server(NONCE)
    pump(client, server)
    server.events_received()
    server.send_server_proof(SERVER_KEY, SIGNATURE)
    pump(server, client)
    client.events_received()
    client.confirm_server()


def ready_pair(*, enrolled: bool = True) -> tuple[ClientProtocol, ServerProtocol]:
    """A READY client and server; the replica enrolled already unless told otherwise."""
    client = enrolled_client() if enrolled else ClientProtocol()
    return handshake(client, ServerProtocol(SERVER_ID))


def client_in(state: ClientState) -> ClientProtocol:
    """A client (enrolled replica) brought to ``state`` through its public API, drained."""
    client = _client_towards(state)
    client.data_to_send()
    client.events_received()
    assert client.state is state
    return client


def _client_towards(state: ClientState) -> ClientProtocol:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    if state is ClientState.START:
        return client
    client.send_hello()
    if state is ClientState.HELLO_SENT:
        return client
    if state is ClientState.HELLO_PROVING:
        client.prove_server(NONCE, version=PROTOCOL_VERSION)  # with Hello, before Welcome
        return client
    pump(client, server)
    pump(server, client)
    if state is ClientState.WELCOMED:
        return client
    client.prove_server(NONCE)
    if state is ClientState.PROVING:
        return client
    pump(client, server)
    server.send_server_proof(SERVER_KEY, SIGNATURE)
    pump(server, client)
    client.confirm_server()
    if state is ClientState.PROVEN:
        return client
    client.authenticate(USER, PASSWORD, ORG)
    if state is ClientState.AUTHENTICATING:
        return client
    pump(client, server)
    server.accept_authentication(TOKEN, 0, USER, ORG)
    pump(server, client)
    if state is ClientState.READY:
        return client
    if state is ClientState.CLOSED:
        client.close("bye")
    else:
        client.reject("internal", "test failure")
    return client


def server_in(state: ServerState, *, enrolled: bool = True) -> ServerProtocol:
    """A server brought to ``state`` by a well-behaved client."""
    client = enrolled_client() if enrolled else ClientProtocol()
    server = ServerProtocol(SERVER_ID)
    if state is ServerState.AWAITING_HELLO:
        return server
    client.send_hello()
    pump(client, server)
    pump(server, client)
    if state is ServerState.WELCOMED:
        server.events_received()
        return server
    client.prove_server(NONCE)
    pump(client, server)
    if state is ServerState.PROVING:
        server.events_received()
        return server
    server.send_server_proof(SERVER_KEY, SIGNATURE)
    pump(server, client)
    client.confirm_server()
    if state is ServerState.PROVEN:
        server.events_received()
        server.data_to_send()
        return server
    client.authenticate(USER, PASSWORD, ORG)
    pump(client, server)
    if state is ServerState.AUTHENTICATING:
        server.events_received()
        return server
    server.accept_authentication(TOKEN, 0, USER, ORG)
    if state is ServerState.READY:
        server.events_received()
        server.data_to_send()
        return server
    if state is ServerState.CLOSED:
        server.close()
    else:
        server.reject("internal", "test failure")
    server.data_to_send()
    server.events_received()
    assert server.state is state
    return server
