"""The first PullRequest sent with the credentials (one round trip less): the client
stays AUTHENTICATING until Authenticated comes; the server, reading frames in order,
takes the request once it has answered the login; a refused login ends it all."""

from __future__ import annotations

import pytest
from tests.protocol.session import (
    ORG,
    SERVER_ID,
    TOKEN,
    USER,
    client_in,
    enrolled_client,
    prove,
    pump,
)

from caresync.exceptions import AuthenticationError, LocalProtocolError
from caresync.protocol import (
    Authenticated,
    ClientProtocol,
    ClientState,
    ErrorCode,
    OutboxReport,
    PullBatch,
    PullRequest,
    ResumeSession,
    ServerProtocol,
    ServerState,
)

SECRET = b"r" * 32


def _proven_pair() -> tuple[ClientProtocol, ServerProtocol]:
    client = enrolled_client()
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    pump(client, server)
    server.events_received()
    pump(server, client)
    client.events_received()
    prove(client, server)
    return client, server


def test_the_pull_request_rides_with_the_credentials_and_is_read_after_the_login() -> None:
    client, server = _proven_pair()
    assert client.state is ClientState.PROVEN
    client.resume_session(TOKEN, SECRET)
    client.request_pull(0)
    assert client.state is ClientState.AUTHENTICATING
    resume, pull = client.data_to_send()
    server.receive_data(resume)
    assert [type(e) for e in server.events_received()] == [ResumeSession]
    assert server.state is ServerState.AUTHENTICATING
    server.accept_authentication(TOKEN, 1_900_000_000_000, USER, ORG)
    server.receive_data(pull)  # read in order: after the login was answered
    assert [type(e) for e in server.events_received()] == [PullRequest]
    server.send_pull_batch([], checkpoint=0, head_seq=0)
    pump(server, client)
    assert [type(e) for e in client.events_received()] == [Authenticated, PullBatch]
    assert client.state is ClientState.READY
    client.request_pull(0)  # the first was answered: a next one may go
    assert len(client.data_to_send()) == 1


def test_the_outbox_report_rides_with_the_pull_and_is_read_after_the_login() -> None:
    client, server = _proven_pair()
    client.resume_session(TOKEN, SECRET)
    client.request_pull(0)
    client.report_outbox(0, None)
    assert client.state is ClientState.AUTHENTICATING
    resume, pull, report = client.data_to_send()
    server.receive_data(resume)
    assert [type(e) for e in server.events_received()] == [ResumeSession]
    server.accept_authentication(TOKEN, 1_900_000_000_000, USER, ORG)
    server.receive_data(pull)
    server.receive_data(report)
    assert [type(e) for e in server.events_received()] == [PullRequest, OutboxReport]
    assert server.state is ServerState.READY


def test_no_outbox_report_before_the_credentials() -> None:
    client = client_in(ClientState.PROVEN)
    with pytest.raises(LocalProtocolError, match="cannot send OutboxReport in state PROVEN"):
        client.report_outbox(0, None)
    assert client.data_to_send() == []


def test_no_pull_request_before_the_credentials_nor_two_at_once() -> None:
    client = client_in(ClientState.PROVEN)
    with pytest.raises(LocalProtocolError, match="cannot send PullRequest in state PROVEN"):
        client.request_pull(0)
    assert client.data_to_send() == []
    client.resume_session(TOKEN, SECRET)
    client.request_pull(0)
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        client.request_pull(0)
    assert len(client.data_to_send()) == 2


def test_a_refused_login_ends_the_connection_with_the_request_sent_ahead() -> None:
    client, server = _proven_pair()
    client.resume_session(TOKEN, SECRET)
    client.request_pull(0)
    resume, _pull = client.data_to_send()
    server.receive_data(resume)
    server.events_received()
    server.reject(ErrorCode.SESSION_EXPIRED, "that session has expired")
    assert server.state is ServerState.FAILED
    with pytest.raises(AuthenticationError, match="expired"):
        pump(server, client)
    assert client.state is ClientState.FAILED
    assert [type(e) for e in client.events_received()] == []
