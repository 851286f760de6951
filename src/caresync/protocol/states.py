"""The sync protocol's states and legal moves, as data.

Theory of operation
-------------------

A connection has two ends, a :class:`~caresync.protocol.client.ClientProtocol` on the
laptop and a :class:`~caresync.protocol.server.ServerProtocol` on the server. Each end
keeps its own state and moves it on two kinds of event: a message it *sends* (a method
call by its shell) and a message it *receives* (a frame passed to ``receive_data``).
The tables below list, for each state, which (direction, message) pairs are legal and
where each one leads. Anything not in the table is illegal: a send raises
:class:`~caresync.exceptions.LocalProtocolError` and changes nothing; a receive raises
:class:`~caresync.exceptions.RemoteProtocolError`, queues a fatal ``Error`` for the
peer and moves to ``FAILED``.

The happy path is a handshake and then a long ``READY`` phase::

    client                                   server
    START ── Hello ──────────────────────▶ AWAITING_HELLO
    HELLO_SENT ◀──────────────── Welcome ── WELCOMED        (sent at once on Hello)
    WELCOMED ── ProveServer ─────────────▶ PROVING          (version 4 on)
    PROVING ◀──────────────── ServerProof ── PROVEN

A client that expects the server to choose the version it chose last time may send
ProveServer right after Hello, written in that version (``HELLO_SENT`` →
``HELLO_PROVING`` → Welcome → ``PROVING``): the server reads frames in order, so it
takes the proof request once it has sent Welcome, and the handshake costs one round
trip less. If the server chooses another version, it refuses that frame; the client,
seeing so in Welcome, fails at once (``EarlyProofLost``) and connects again without.
    PROVEN ── Authenticate | ResumeSession ▶ AUTHENTICATING
    AUTHENTICATING ◀──────── Authenticated ── READY
    READY ◀── requests and replies, live updates ──▶ READY

A client may likewise send its first ``PullRequest`` right after its credentials,
before Authenticated arrives (it stays ``AUTHENTICATING``): the server reads it only
once it has answered the login, and answers it as in ``READY``; a refused login ends
the connection, and the request with it. A sync with nothing to send costs one round
trip less. Its ``OutboxReport`` (which has no reply) may go along the same way, in the
same write.

From version 4 the client proves the server before it sends a credential:
credentials leave ``PROVEN`` only once the shell confirmed the proof (checked
in code: the tables cannot see the version). A version 1 to 3 connection skips
the proof, ``WELCOMED`` straight to ``AUTHENTICATING``.

In ``READY``, several kinds of request (:class:`RequestKind`) may run at the same time,
but at most one of each kind: a second ``PullRequest`` before the ``PullBatch`` that
answers the first is illegal, and so is a reply nobody asked for. That discipline is the
second table, :data:`REQUESTS`. Copy, pull, push and subscribe further need an enrolled
replica (:data:`NEEDS_ENROLMENT`): one whose ``Hello`` named it, or that was
``Enrolled`` on this connection; ``Enrol`` needs one that is not.

From every open state (every state but ``CLOSED`` and ``FAILED``), either side may send
or receive ``Goodbye`` (→ ``CLOSED``) or a fatal ``Error`` (→ ``FAILED``), and the shell
may report the connection lost (→ ``FAILED``). A non-fatal ``Error`` answers one
outstanding request and leaves the state as it is. In ``CLOSED`` and ``FAILED``
nothing more may be sent and frames still arriving are discarded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from caresync.protocol.messages import (
    AuditAck,
    AuditBatch,
    Authenticate,
    Authenticated,
    CopyBatch,
    CopyRequest,
    Enrol,
    Enrolled,
    Error,
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
    RecordPart,
    RecordPartRequest,
    ResumeSession,
    ServerProof,
    Subscribe,
    Welcome,
)

__all__ = [
    "CLIENT_TRANSITIONS",
    "NEEDS_ENROLMENT",
    "REQUESTS",
    "SERVER_TRANSITIONS",
    "ClientState",
    "Direction",
    "EventKey",
    "Pseudo",
    "RequestKind",
    "ServerState",
]


class ClientState(enum.Enum):
    """The client end's states."""

    START = "start"
    """Nothing sent yet."""
    HELLO_SENT = "hello_sent"
    """Hello sent; waiting for Welcome."""
    HELLO_PROVING = "hello_proving"
    """Hello and, at once, ProveServer sent (a client that expects the version the
    server chose last time); waiting for Welcome, then the ServerProof."""
    WELCOMED = "welcomed"
    """Welcome received (its server id checked); from version 4, prove the server next."""
    PROVING = "proving"
    """ProveServer sent; waiting for the ServerProof (version 4 on)."""
    PROVEN = "proven"
    """ServerProof received; credentials go once the shell confirmed it (version 4 on)."""
    AUTHENTICATING = "authenticating"
    """Authenticate or ResumeSession sent; waiting for Authenticated."""
    READY = "ready"
    """Logged in: enrol, copy, pull, push and subscribe."""
    CLOSED = "closed"
    """Goodbye sent or received."""
    FAILED = "failed"
    """A fatal error either way, a refusal, or the connection lost."""


class ServerState(enum.Enum):
    """The server end's states."""

    AWAITING_HELLO = "awaiting_hello"
    """Nothing received yet."""
    WELCOMED = "welcomed"
    """Hello received and Welcome sent; waiting for ProveServer (or, before version 4,
    credentials)."""
    PROVING = "proving"
    """ProveServer received; the shell answers with its signed proof."""
    PROVEN = "proven"
    """ServerProof sent; waiting for credentials."""
    AUTHENTICATING = "authenticating"
    """Credentials received; the shell decides (accept_authentication or reject)."""
    READY = "ready"
    """Logged in: answer requests, forward live updates."""
    CLOSED = "closed"
    """Goodbye sent or received."""
    FAILED = "failed"
    """A fatal error either way, a refusal, or the connection lost."""


class Direction(enum.Enum):
    """Whether an end sends a message or receives it."""

    SEND = "send"
    RECEIVE = "receive"


class Pseudo(enum.Enum):
    """Events that are not a message class of their own."""

    FATAL_ERROR = "fatal_error"
    """An :class:`~caresync.protocol.messages.Error` with ``fatal=True``."""
    CONNECTION_LOST = "connection_lost"
    """The shell reports the transport gone (``connection_lost()``)."""


class RequestKind(enum.Enum):
    """The kinds of request a client may have outstanding, at most one of each."""

    ENROL = "enrol"
    COPY = "copy"
    PULL = "pull"
    PUSH = "push"
    AUDIT = "audit"
    PART = "part"
    """A part of a record a first copy takes in parts (protocol version 15 on)."""


EventKey = type[Message] | Pseudo
"""What the tables are keyed on: a message class (an Error there is non-fatal) or a pseudo-event."""

REQUESTS: Mapping[RequestKind, tuple[type[Message], type[Message]]] = MappingProxyType(
    {
        RequestKind.ENROL: (Enrol, Enrolled),
        RequestKind.COPY: (CopyRequest, CopyBatch),
        RequestKind.PULL: (PullRequest, PullBatch),
        RequestKind.PUSH: (PushBatch, PushAck),
        RequestKind.AUDIT: (AuditBatch, AuditAck),
        RequestKind.PART: (RecordPartRequest, RecordPart),
    }
)
"""Each request kind: (the client's request, the server's reply). One outstanding per kind."""

NEEDS_ENROLMENT: frozenset[type[Message]] = frozenset(
    {CopyRequest, RecordPartRequest, PullRequest, PushBatch, Subscribe, OutboxReport, AuditBatch}
)
"""Messages a client may send only as an enrolled replica."""

_S = TypeVar("_S", ClientState, ServerState)

_SEND, _RECV = Direction.SEND, Direction.RECEIVE


def _table(
    moves: dict[_S, dict[tuple[Direction, EventKey], _S]],
    *,
    closed: _S,
    failed: _S,
) -> Mapping[_S, Mapping[tuple[Direction, EventKey], _S]]:
    """Freeze ``moves``, adding the moves every open state allows."""
    out: dict[_S, Mapping[tuple[Direction, EventKey], _S]] = {}
    for state in type(closed):
        row = dict(moves.get(state, {}))
        if state is not closed and state is not failed:
            row[_SEND, Goodbye] = closed
            row[_RECV, Goodbye] = closed
            row[_SEND, Pseudo.FATAL_ERROR] = failed
            row[_RECV, Pseudo.FATAL_ERROR] = failed
            row[_RECV, Pseudo.CONNECTION_LOST] = failed
        out[state] = MappingProxyType(row)
    return MappingProxyType(out)


_C = ClientState
CLIENT_TRANSITIONS: Mapping[ClientState, Mapping[tuple[Direction, EventKey], ClientState]] = _table(
    {
        _C.START: {(_SEND, Hello): _C.HELLO_SENT},
        _C.HELLO_SENT: {
            (_RECV, Welcome): _C.WELCOMED,
            (_SEND, ProveServer): _C.HELLO_PROVING,  # pipelined: before Welcome
        },
        _C.HELLO_PROVING: {(_RECV, Welcome): _C.PROVING},
        _C.WELCOMED: {
            (_SEND, ProveServer): _C.PROVING,
            (_SEND, Authenticate): _C.AUTHENTICATING,  # before version 4 only
            (_SEND, ResumeSession): _C.AUTHENTICATING,  # before version 4 only
        },
        _C.PROVING: {(_RECV, ServerProof): _C.PROVEN},
        _C.PROVEN: {
            (_SEND, Authenticate): _C.AUTHENTICATING,
            (_SEND, ResumeSession): _C.AUTHENTICATING,
        },
        _C.AUTHENTICATING: {
            (_RECV, Authenticated): _C.READY,
            # Pipelined: the first pull rides with the credentials (see above), and the
            # outbox's report with it.
            (_SEND, PullRequest): _C.AUTHENTICATING,
            (_SEND, OutboxReport): _C.AUTHENTICATING,
        },
        _C.READY: {
            (_SEND, Enrol): _C.READY,
            (_SEND, CopyRequest): _C.READY,
            (_SEND, PullRequest): _C.READY,
            (_SEND, PushBatch): _C.READY,
            (_SEND, Subscribe): _C.READY,
            (_SEND, OutboxReport): _C.READY,  # protocol version 2 on; no reply
            (_SEND, AuditBatch): _C.READY,  # protocol version 7 on
            (_SEND, RecordPartRequest): _C.READY,  # protocol version 15 on
            (_RECV, AuditAck): _C.READY,
            (_RECV, RecordPart): _C.READY,
            (_RECV, Enrolled): _C.READY,
            (_RECV, CopyBatch): _C.READY,
            (_RECV, PullBatch): _C.READY,
            (_RECV, PushAck): _C.READY,
            (_RECV, LiveUpdate): _C.READY,
            (_RECV, LiveBatch): _C.READY,  # protocol version 3 on
            (_RECV, HubReport): _C.READY,  # protocol version 7 on; after a pull
            (_RECV, Error): _C.READY,  # non-fatal: refuses one outstanding request
        },
    },
    closed=_C.CLOSED,
    failed=_C.FAILED,
)
"""The client's moves: state → {(direction, event): next state}."""

_V = ServerState
SERVER_TRANSITIONS: Mapping[ServerState, Mapping[tuple[Direction, EventKey], ServerState]] = _table(
    {
        # Receiving Hello queues Welcome in the same step (or refuses it).
        _V.AWAITING_HELLO: {(_RECV, Hello): _V.WELCOMED},
        _V.WELCOMED: {
            (_RECV, ProveServer): _V.PROVING,
            (_RECV, Authenticate): _V.AUTHENTICATING,  # a client that skips the proof
            (_RECV, ResumeSession): _V.AUTHENTICATING,
        },
        _V.PROVING: {(_SEND, ServerProof): _V.PROVEN},
        _V.PROVEN: {
            (_RECV, Authenticate): _V.AUTHENTICATING,
            (_RECV, ResumeSession): _V.AUTHENTICATING,
        },
        _V.AUTHENTICATING: {(_SEND, Authenticated): _V.READY},
        _V.READY: {
            (_RECV, Enrol): _V.READY,
            (_RECV, CopyRequest): _V.READY,
            (_RECV, PullRequest): _V.READY,
            (_RECV, PushBatch): _V.READY,
            (_RECV, Subscribe): _V.READY,
            (_RECV, OutboxReport): _V.READY,  # protocol version 2 on; no reply
            (_RECV, AuditBatch): _V.READY,  # protocol version 7 on
            (_RECV, RecordPartRequest): _V.READY,  # protocol version 15 on
            (_SEND, AuditAck): _V.READY,
            (_SEND, Enrolled): _V.READY,
            (_SEND, CopyBatch): _V.READY,
            (_SEND, PullBatch): _V.READY,
            (_SEND, PushAck): _V.READY,
            (_SEND, RecordPart): _V.READY,
            (_SEND, LiveUpdate): _V.READY,
            (_SEND, LiveBatch): _V.READY,  # protocol version 3 on
            (_SEND, HubReport): _V.READY,  # protocol version 7 on; after a pull
            (_SEND, Error): _V.READY,  # non-fatal: refuses one outstanding request
        },
    },
    closed=_V.CLOSED,
    failed=_V.FAILED,
)
"""The server's moves: state → {(direction, event): next state}."""
