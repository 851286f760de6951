"""What both ends of a sync connection share: bytes in, events out, bytes to send.

:class:`SyncProtocol` is shaped like ``websockets.protocol.Protocol``: a shell passes
each websocket message it receives to :meth:`~SyncProtocol.receive_data`, handles
:meth:`~SyncProtocol.events_received`, and sends every frame from
:meth:`~SyncProtocol.data_to_send`. It never touches a socket, a clock or a database.
A shell's loop, in outline::

    try:
        protocol.receive_data(frame)
    except CaresyncError:
        ...  # send data_to_send(), then close the websocket; the error says why
    for event in protocol.events_received():
        ...  # act on it, answering through the protocol's methods
    for frame in protocol.data_to_send():
        await websocket.send(frame)
    if protocol.close_expected:
        await websocket.close()

``receive_data`` raises whenever the frame ends the connection badly: a malformed or
illegal frame (:class:`~caresync.exceptions.RemoteProtocolError`, after queueing a fatal
``Error`` for the peer), a refusal this end decided (e.g.
:class:`~caresync.exceptions.WrongServerError`), or a fatal ``Error`` from the peer
(the exception :func:`~caresync.protocol.errors.error_for` maps its code to). In every
case the state is then ``FAILED`` and :attr:`~SyncProtocol.failure` holds the exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Generic, TypeVar, cast

from caresync.exceptions import (
    CaresyncError,
    ConnectionLostError,
    FrameTooLargeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from caresync.protocol.codec import decode_frame, encode_frame
from caresync.protocol.errors import ErrorCode, error_for
from caresync.protocol.messages import (
    MAX_MAX_FRAME_BYTES,
    MAX_MESSAGE_LENGTH,
    MIN_MAX_FRAME_BYTES,
    DetailValue,
    Error,
    Goodbye,
    Message,
)
from caresync.protocol.states import (
    REQUESTS,
    ClientState,
    Direction,
    EventKey,
    Pseudo,
    RequestKind,
    ServerState,
)

__all__ = ["SyncProtocol"]

StateT = TypeVar("StateT", ClientState, ServerState)
EventT = TypeVar("EventT", bound=Message)

_REQUEST_KIND: Mapping[type[Message], RequestKind] = {
    request: kind for kind, (request, _reply) in REQUESTS.items()
}
_REPLY_KIND: Mapping[type[Message], RequestKind] = {
    reply: kind for kind, (_request, reply) in REQUESTS.items()
}
_KIND_BY_CODE: Mapping[int, RequestKind] = {
    request.TYPE_CODE: kind for kind, (request, _reply) in REQUESTS.items()
}


def _key(message: Message) -> EventKey:
    if isinstance(message, Error) and message.fatal:
        return Pseudo.FATAL_ERROR
    return type(message)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_LENGTH else text[: MAX_MESSAGE_LENGTH - 3] + "..."


class SyncProtocol(Generic[StateT, EventT]):
    """One end of one sync connection (sans-I/O); see the module docstring.

    Not built directly: use :class:`~caresync.protocol.client.ClientProtocol` or
    :class:`~caresync.protocol.server.ServerProtocol`.
    """

    _side = "end"
    _peer = "peer"

    def __init__(
        self,
        *,
        transitions: Mapping[StateT, Mapping[tuple[Direction, EventKey], StateT]],
        initial: StateT,
        closed: StateT,
        failed: StateT,
        max_frame_bytes: int,
        fallback_version: int,
    ) -> None:
        if (
            type(max_frame_bytes) is not int
            or not MIN_MAX_FRAME_BYTES <= max_frame_bytes <= MAX_MAX_FRAME_BYTES
        ):
            raise LocalProtocolError(
                f"max_frame_bytes must be an int in [{MIN_MAX_FRAME_BYTES}, {MAX_MAX_FRAME_BYTES}]"
            )
        self._transitions: Mapping[StateT, Mapping[tuple[Direction, EventKey], StateT]] = (
            transitions
        )
        self._state: StateT = initial
        self._closed: StateT = closed
        self._failed: StateT = failed
        self._max_frame_bytes = max_frame_bytes
        self._peer_max_frame_bytes = MIN_MAX_FRAME_BYTES
        self._fallback_version = fallback_version
        self._version: int | None = None
        self._events: list[EventT] = []
        self._outgoing: list[bytes] = []
        self._errors_sent: list[Error] = []
        self._outstanding: dict[RequestKind, Message] = {}
        self._failure: CaresyncError | None = None
        self._peer_error: Error | None = None
        self._enrolled = False

    # ----------------------------------------------------------------- properties

    @property
    def state(self) -> StateT:
        """The current state (see :mod:`caresync.protocol.states`)."""
        return self._state

    @property
    def protocol_version(self) -> int | None:
        """The protocol version agreed with the peer, or ``None`` before Welcome."""
        return self._version

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame this end accepts."""
        return self._max_frame_bytes

    @property
    def peer_max_frame_bytes(self) -> int:
        """The largest frame the peer accepts: every frame sent is at most this size.

        Until the peer has said (in Hello or Welcome), the protocol minimum.
        """
        return self._peer_max_frame_bytes

    @property
    def outstanding(self) -> Mapping[RequestKind, Message]:
        """The requests sent (client) or received (server) and not yet answered."""
        return MappingProxyType(self._outstanding)

    @property
    def enrolled(self) -> bool:
        """True once the replica is known enrolled: named in Hello, or Enrolled here."""
        return self._enrolled

    @property
    def failure(self) -> CaresyncError | None:
        """Why the connection failed (state ``FAILED``), or ``None``."""
        return self._failure

    @property
    def peer_error(self) -> Error | None:
        """The fatal :class:`~caresync.protocol.messages.Error` the peer sent, if any."""
        return self._peer_error

    @property
    def close_expected(self) -> bool:
        """True once the connection is over: send what is queued, then close."""
        return self._state is self._closed or self._state is self._failed

    # ------------------------------------------------------------------- I/O side

    def receive_data(self, frame: bytes | bytearray | memoryview | str) -> None:
        """Take one frame (one websocket message) from the peer.

        Events it produces are then available from :meth:`events_received`. Raises a
        :class:`~caresync.exceptions.CaresyncError` when the frame ends the connection
        (see the module docstring). Once the connection is over, frames are discarded.
        """
        if self.close_expected:
            return
        try:
            version, message = decode_frame(frame, max_frame_bytes=self._max_frame_bytes)
            if self._version is not None and version != self._version:
                raise RemoteProtocolError(
                    f"a {type(message).__name__} in protocol version {version}; "
                    f"version {self._version} was agreed"
                )
            self._receive(version, message)
        except RemoteProtocolError as exc:
            if not self.close_expected:
                code = (
                    ErrorCode.TOO_LARGE
                    if isinstance(exc, FrameTooLargeError)
                    else ErrorCode.BAD_MESSAGE
                )
                self._fail(exc, Error(code, _clip(str(exc))))
            raise

    def events_received(self) -> list[EventT]:
        """The events produced since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """The frames queued since the last call, each to send as one binary message."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def errors_sent(self) -> list[Error]:
        """The :class:`~caresync.protocol.messages.Error` messages queued for the peer
        since the last call, oldest first (what a shell logs and counts as refusals)."""
        errors, self._errors_sent = self._errors_sent, []
        return errors

    # ------------------------------------------------------------- common moves

    def close(self, reason: str = "") -> None:
        """Say Goodbye: queue it and move to ``CLOSED``; the shell then closes."""
        self._send(Goodbye(reason))

    def reject(
        self, code: str, message: str, *, detail: Mapping[str, DetailValue] | None = None
    ) -> None:
        """Queue a fatal :class:`~caresync.protocol.messages.Error` and move to ``FAILED``.

        ``code`` should be an :class:`~caresync.protocol.errors.ErrorCode`.
        :attr:`failure` becomes the exception the code maps to.
        """
        error = Error(code, _clip(message), True, detail or {})
        self._send(error)
        self._failure = error_for(code, message)

    def connection_lost(self) -> None:
        """The shell reports the transport gone. An open connection becomes ``FAILED``.

        :attr:`failure` becomes a :class:`~caresync.exceptions.ConnectionLostError`;
        :attr:`outstanding` still shows what was unanswered.
        """
        if self.close_expected:
            return
        pending = ", ".join(kind.value for kind in self._outstanding) or "none"
        self._failure = ConnectionLostError(
            f"the connection to the {self._peer} was lost in state {self._state.name} "
            f"(requests outstanding: {pending})"
        )
        self._state = self._transitions[self._state][Direction.RECEIVE, Pseudo.CONNECTION_LOST]

    # --------------------------------------------------------------- internals

    def _emit(self, message: Message) -> None:
        self._events.append(cast(EventT, message))

    def _queue(self, message: Message) -> None:
        """Encode and queue ``message`` for the peer, outside the tables."""
        if isinstance(message, Error):
            self._errors_sent.append(message)
        self._outgoing.append(
            encode_frame(
                message,
                version=self._frame_version(),
                max_frame_bytes=self._peer_max_frame_bytes,
            )
        )

    def _frame_version(self) -> int:
        """The version to write the next frame in: the agreed one, else the fallback."""
        return self._version or self._fallback_version

    def _fail(self, exc: CaresyncError, error: Error | None) -> None:
        """Move to ``FAILED`` because of ``exc``, queueing ``error`` for the peer if given."""
        self._failure = exc
        if error is not None:
            self._queue(error)
        self._state = self._failed

    def _expect(self, kind: RequestKind) -> Message:
        """The outstanding request of ``kind``, for a reply about to be sent."""
        request = self._outstanding.get(kind)
        if request is None:
            raise LocalProtocolError(f"no {kind.value} request is outstanding to answer")
        return request

    def _send(self, message: Message) -> None:
        """Queue ``message`` if the tables allow it here; raise LocalProtocolError if not."""
        key = _key(message)
        name = type(message).__name__
        target = self._transitions[self._state].get((Direction.SEND, key))
        if target is None:
            raise LocalProtocolError(
                f"the {self._side} cannot send {name} in state {self._state.name}"
            )
        request_kind = _REQUEST_KIND.get(type(message))
        reply_kind = _REPLY_KIND.get(type(message))
        answered: RequestKind | None = reply_kind
        if request_kind is not None and request_kind in self._outstanding:
            raise LocalProtocolError(
                f"a {request_kind.value} request is already outstanding; wait for its answer"
            )
        if isinstance(message, Error) and not message.fatal:
            code = message.in_reply_to
            answered = _KIND_BY_CODE.get(code) if code is not None else None
            if answered is None:
                raise LocalProtocolError("a non-fatal Error must answer a request")
        if answered is not None and answered not in self._outstanding:
            raise LocalProtocolError(f"no {answered.value} request is outstanding to answer")
        self._queue(message)  # raises LocalProtocolError (too large) before any change
        if request_kind is not None:
            self._outstanding[request_kind] = message
        if answered is not None:
            del self._outstanding[answered]
        self._state = target

    def _receive(self, version: int, message: Message) -> None:
        key = _key(message)
        name = type(message).__name__
        target = self._transitions[self._state].get((Direction.RECEIVE, key))
        if target is None:
            raise RemoteProtocolError(
                f"{name} from the {self._peer} is not allowed in state {self._state.name}"
            )
        if isinstance(message, Error):
            if message.fatal:
                self._peer_error = message
                exc = error_for(message.code, message.message)
                self._fail(exc, None)
                raise exc
            code = message.in_reply_to
            kind = _KIND_BY_CODE.get(code) if code is not None else None
            if kind is None or kind not in self._outstanding:
                raise RemoteProtocolError(
                    f"a non-fatal Error ({message.code}) refusing a request that is not outstanding"
                )
            del self._outstanding[kind]
            self._state = target
            self._emit(message)
            return
        if isinstance(message, Goodbye):
            self._state = target
            self._emit(message)
            return
        request_kind = _REQUEST_KIND.get(type(message))
        reply_kind = _REPLY_KIND.get(type(message))
        if request_kind is not None and request_kind in self._outstanding:
            raise RemoteProtocolError(
                f"a second {name} before the {request_kind.value} request was answered"
            )
        if reply_kind is not None and reply_kind not in self._outstanding:
            raise RemoteProtocolError(f"{name} answers no outstanding {reply_kind.value} request")
        self._on_message(version, message)
        if request_kind is not None:
            self._outstanding[request_kind] = message
        if reply_kind is not None:
            del self._outstanding[reply_kind]
        self._state = target

    def _on_message(self, version: int, message: Message) -> None:
        """Check ``message`` against this end's state and emit it; raise if it is wrong."""
        raise NotImplementedError  # pragma: no cover - every end overrides it
