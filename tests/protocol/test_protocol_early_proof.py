"""The proof request sent with Hello (one round trip less): written in the version the
client expects; the server takes it in order; another version ends the connection at
once, with nothing secret sent, and the client knows to connect again."""

from __future__ import annotations

import pytest
from tests.protocol.session import NONCE, SERVER_ID, SERVER_KEY, SIGNATURE, enrolled_client, pump

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    PROTOCOL_VERSION,
    ClientState,
    EarlyProofLost,
    ProveServer,
    ServerProof,
    ServerProtocol,
    ServerState,
    Welcome,
    decode_frame,
)


def test_the_proof_request_goes_with_hello_and_the_server_takes_it_in_order() -> None:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    client.prove_server(NONCE, version=PROTOCOL_VERSION)
    assert client.state is ClientState.HELLO_PROVING
    frames = client.data_to_send()
    assert [decode_frame(f)[0] for f in frames] == [PROTOCOL_VERSION, PROTOCOL_VERSION]
    for frame in frames:  # both at once, before any Welcome came back
        server.receive_data(frame)
    assert [type(e) for e in server.events_received()] == [
        type(decode_frame(frames[0])[1]),
        ProveServer,
    ]
    assert server.state is ServerState.PROVING
    server.send_server_proof(SERVER_KEY, SIGNATURE)
    pump(server, client)  # Welcome and ServerProof, together
    assert [type(e) for e in client.events_received()] == [Welcome, ServerProof]
    assert client.state is ClientState.PROVEN
    assert client.protocol_version == PROTOCOL_VERSION
    assert client.nonce == NONCE


def test_a_server_choosing_another_version_ends_the_connection_with_nothing_more_sent() -> None:
    older = PROTOCOL_VERSION - 1
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID, protocol_versions=range(4, older + 1))
    client.send_hello()
    client.prove_server(NONCE, version=PROTOCOL_VERSION)  # expects the newest; gets older
    hello, early = client.data_to_send()
    server.receive_data(hello)
    with pytest.raises(RemoteProtocolError, match=f"version {older} was agreed"):
        server.receive_data(early)  # what a server does with it: refused
    welcome = server.data_to_send()[0]
    with pytest.raises(EarlyProofLost, match="connect again"):
        client.receive_data(welcome)
    assert client.state is ClientState.FAILED
    assert client.data_to_send() == []  # not even an Error: the server ends it
    assert isinstance(client.failure, EarlyProofLost)


@pytest.mark.parametrize("version", [None, 3, PROTOCOL_VERSION + 1])
def test_a_proof_request_with_hello_needs_a_version_the_client_offers(
    version: int | None,
) -> None:
    client = enrolled_client(protocol_versions=range(4, PROTOCOL_VERSION + 1))
    client.send_hello()
    client.data_to_send()
    with pytest.raises(LocalProtocolError, match="version the server is expected"):
        client.prove_server(NONCE, version=version)
    assert client.state is ClientState.HELLO_SENT
    assert client.data_to_send() == []


def test_after_welcome_the_proof_request_goes_in_the_agreed_version_only() -> None:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    pump(server, client)
    with pytest.raises(LocalProtocolError, match="after Welcome agreed"):
        client.prove_server(NONCE, version=PROTOCOL_VERSION - 1)
    client.prove_server(NONCE, version=PROTOCOL_VERSION)
    assert client.state is ClientState.PROVING
