"""A channel carries whole frames (bytes) between two peers, and nothing else.

The sync protocol is sans-I/O; a channel is the only thing between it and the
network. Two implementations pass one conformance suite: websockets over TCP
(with TLS when given an ssl context) and an in-memory twin for tests and
simulations, whose links can be cut at will.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_QUEUED_FRAMES",
    "NOWAIT_REPLY_BYTES",
    "Acceptor",
    "Channel",
    "ChannelHandler",
    "ClosingSend",
    "Connector",
    "Listener",
    "NowaitSend",
    "closing_sender",
    "nowait_sender",
    "reply_nowait",
    "send_reply",
]

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_QUEUED_FRAMES = 16
"""Received frames that may wait unread before the sender is held (websockets' default)."""


@runtime_checkable
class Channel(Protocol):
    """One connection. ``send``/``recv`` raise ConnectionLostError once it is closed."""

    @property
    def peer(self) -> str:
        """Who is at the other end (an address, or a name for in-memory links)."""
        ...

    @property
    def closed(self) -> bool:
        """True once either side closed or the link broke."""
        ...

    @property
    def remote_host(self) -> str | None:
        """The peer's network address without its port (None for in-memory links)."""
        ...

    @property
    def channel_binding(self) -> bytes | None:
        """The TLS channel binding (``tls-unique``) of this connection; None without TLS.

        Both ends of one TLS connection see the same bytes; a man in the middle
        holds two connections with two different bindings.
        """
        ...

    def set_limits(self, *, max_frame_bytes: int, max_queued_frames: int) -> None:
        """Change the largest frame accepted and how many received frames may wait.

        A server starts every connection small (an unauthenticated peer gets a
        few KiB) and raises the limits once the peer has logged in.
        """
        ...

    async def send(self, frame: bytes) -> None:
        """Send one frame; returns when handed to the transport."""
        ...

    async def recv(self) -> bytes:
        """The next frame from the peer; FrameTooLargeError for an oversized one."""
        ...

    async def close(self, reason: str = "") -> None:
        """Close the channel (idempotent)."""
        ...


NOWAIT_REPLY_BYTES = 64 * 1024
"""A reply of at most this many bytes in all is written with ``send_nowait`` (in one
write where the channel can); a larger one goes frame by frame through ``send``, which
waits for the peer to take each in turn, so what waits unsent stays bounded."""


class NowaitSend(Protocol):
    """A channel's ``send_nowait(frames)``: write the frames now, in order, and return
    True, or write none and return False where ``send`` would wait (its buffer full).

    ``shared``: the same frame objects go to many channels (a live fan-out), so a
    channel may keep their wire form for the next; False for frames sent once (a
    reply), which must not push the shared ones out of what is kept."""

    def __call__(self, frames: Sequence[bytes], *, shared: bool = True) -> bool: ...


def nowait_sender(channel: Channel) -> NowaitSend | None:
    """The channel's ``send_nowait``, if its class defines one (websockets' and in-memory
    channels do), else None. Looked up on the class, not the object: a wrapper that
    forwards other attributes to an inner channel but makes ``send`` its own (a test's
    stalling channel) is not bypassed by its inner channel's ``send_nowait``."""
    method = getattr(type(channel), "send_nowait", None)
    if method is None:
        return None
    bound: NowaitSend = method.__get__(channel, type(channel))
    return bound


ClosingSend = Callable[[Sequence[bytes], str], bool]
"""A channel's ``send_closing_nowait(frames, reason)``: write the frames and the close
of the link together, now, and return True; or write nothing and return False (then
send them, and close)."""


def closing_sender(channel: Channel) -> ClosingSend | None:
    """The channel's ``send_closing_nowait``, if its class defines one (websockets'
    does), else None; looked up on the class, as :func:`nowait_sender` does."""
    method = getattr(type(channel), "send_closing_nowait", None)
    if method is None:
        return None
    bound: ClosingSend = method.__get__(channel, type(channel))
    return bound


def reply_nowait(send_nowait: NowaitSend | None, frames: Sequence[bytes]) -> bool:
    """Write a reply's ``frames`` at once with ``send_nowait`` (``shared=False``) if it
    is given, the reply is at most :data:`NOWAIT_REPLY_BYTES` and the channel takes it
    without waiting; False (nothing written): send them with ``send``."""
    return (
        send_nowait is not None
        and sum(map(len, frames)) <= NOWAIT_REPLY_BYTES
        and send_nowait(frames, shared=False)
    )


async def send_reply(
    channel: Channel, send_nowait: NowaitSend | None, frames: Sequence[bytes]
) -> None:
    """Send a reply's ``frames``, in order: at once where :func:`reply_nowait` can,
    else one by one with ``channel.send`` (each waits for the peer to take it)."""
    if frames and not reply_nowait(send_nowait, frames):
        for frame in frames:
            await channel.send(frame)


ChannelHandler = Callable[[Channel], Awaitable[None]]
"""What a listener runs for each accepted channel."""


class Listener(Protocol):
    """Accepts channels and runs a handler for each, until closed."""

    @property
    def url(self) -> str:
        """Where clients connect."""
        ...

    async def close(self) -> None:
        """Stop accepting and close every open channel."""
        ...


@runtime_checkable
class Connector(Protocol):
    """How a laptop reaches a server: checks a server URL, opens a channel to it.

    :class:`~caresync.replica.Replica` takes one (default: websockets,
    :class:`~caresync.transport.websocket.WebSocketConnector`); tests and
    simulations pass a :class:`~caresync.transport.network.MemoryLink` instead.
    """

    def check_url(self, url: object, *, insecure: bool = False) -> str:
        """``url`` if this connector can reach it under its security policy; else raise
        InvalidInputError (malformed) or InsecureConnectionError (refused)."""
        ...

    async def connect(self, url: str, *, ssl: ssl_module.SSLContext | None = None) -> Channel:
        """A new channel to the server at ``url``; ConnectionLostError if unreachable."""
        ...


@runtime_checkable
class Acceptor(Protocol):
    """Where a server listens: runs ``handler`` for each channel it accepts.

    Every accepted channel starts with the given limits, from its first frame
    (a server raises them once the peer logged in). :meth:`SyncServer.listen
    <caresync.server.SyncServer.listen>` takes one.
    """

    async def listen(
        self, handler: ChannelHandler, *, max_frame_bytes: int, max_queued_frames: int
    ) -> Listener:
        """Start accepting; the listener's ``url`` is where laptops connect."""
        ...
