"""In-memory channels: the websocket channel's twin for tests and simulations.

Frames are delivered whole and in order. The twin behaves like a websocket in
everything a replica or a server relies on (the conformance suite,
:mod:`caresync.testing.channel_suite`, checks both):

* the receiving end refuses a frame over its ``max_frame_bytes``
  (FrameTooLargeError there, and the link closes, as websockets' close 1009);
* at most ``max_queued_frames`` received frames wait unread, and beyond them
  what the network would buffer (:data:`BUFFER_BYTES`); past that the sender's
  ``send`` waits until the reader takes a frame (a websocket pauses reading,
  TCP's buffers fill, and the sender's drain waits);
* ``close(reason)`` lets the frames already sent arrive, then the other end's
  ``recv`` raises ConnectionLostError carrying the reason, as a websocket's
  close frame does (a replica shows it: "too far behind the live updates");
* :meth:`MemoryChannel.cut` breaks the link as a failed network does: frames in
  flight are lost, and both ends see ConnectionLostError at once;
* ``remote_host`` and ``channel_binding`` are None (no address, no TLS).

An optional ``delay`` holds each frame that long before the reader may take it
(latency, not throughput: frames sent together arrive together).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Sequence

from caresync.exceptions import ConnectionLostError, FrameTooLargeError, InvalidInputError
from caresync.transport.base import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_QUEUED_FRAMES,
    ChannelHandler,
)

__all__ = ["BUFFER_BYTES", "MemoryChannel", "MemoryListener", "memory_pipe"]

BUFFER_BYTES = 128 * 1024
"""Bytes that may wait beyond ``max_queued_frames`` before a sender is held: what TCP's
buffers hold on a loopback connection, roughly. Without it a peer that sends a few
frames before reading would stall here and not over a socket."""


class MemoryChannel:
    """One end of an in-memory link. Make a pair with :func:`memory_pipe`."""

    def __init__(
        self,
        peer: str,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
        delay: float = 0.0,
    ) -> None:
        _check_limits(max_frame_bytes, max_queued_frames)
        self._peer = peer
        self._inbox: deque[tuple[float, bytes]] = deque()  # (deliverable at, frame)
        self._inbox_bytes = 0
        self._arrived = asyncio.Event()  # set when a frame or the end arrives
        self._taken = asyncio.Event()  # set when the reader takes a frame (room to send)
        self._other: MemoryChannel | None = None
        self._closed = False  # this end can send no more
        self._ended: str | None = None  # why the peer's frames stopped (None: they go on)
        self._refused = False  # the peer closed because this end sent a frame over its limit
        self._max = max_frame_bytes
        self._max_queued = max_queued_frames
        self._delay = delay
        self.frames_sent = 0
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"<MemoryChannel to {self._peer}{' closed' if self._closed else ''}>"

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def remote_host(self) -> str | None:
        return None

    @property
    def channel_binding(self) -> bytes | None:
        return None

    def set_limits(self, *, max_frame_bytes: int, max_queued_frames: int) -> None:
        """Change the largest frame accepted and how many received frames may wait."""
        _check_limits(max_frame_bytes, max_queued_frames)
        self._max = max_frame_bytes
        self._max_queued = max_queued_frames
        self._taken.set()  # a larger queue may let a waiting sender go on

    async def send(self, frame: bytes) -> None:
        if not isinstance(frame, (bytes, bytearray)):
            raise InvalidInputError("frames are bytes")
        while True:
            other = self._other
            if self._closed or other is None or other._ended is not None:
                raise ConnectionLostError(f"link to {self._peer} is closed")
            if len(other._inbox) < other._max_queued or other._inbox_bytes < BUFFER_BYTES:
                break
            # The reader is behind: wait until it takes a frame (or the link ends).
            other._taken.clear()
            await other._taken.wait()
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        due = asyncio.get_running_loop().time() + self._delay if self._delay > 0 else 0.0
        other._inbox.append((due, bytes(frame)))
        other._inbox_bytes += len(frame)
        other._arrived.set()

    def send_nowait(self, frames: Sequence[bytes], *, shared: bool = True) -> bool:
        """Deliver ``frames`` now, in order, if the link is open and the peer's inbox has
        room (where :meth:`send` would not wait); otherwise deliver nothing and return
        False (then :meth:`send` them). ``shared`` changes nothing here: each frame is
        copied into the peer's inbox."""
        other = self._other
        if self._closed or other is None or other._ended is not None:
            return False
        if len(other._inbox) >= other._max_queued and other._inbox_bytes >= BUFFER_BYTES:
            return False
        due = asyncio.get_running_loop().time() + self._delay if self._delay > 0 else 0.0
        for frame in frames:
            self.frames_sent += 1
            self.bytes_sent += len(frame)
            other._inbox.append((due, bytes(frame)))
            other._inbox_bytes += len(frame)
        other._arrived.set()
        return True

    async def recv(self) -> bytes:
        while not self._inbox:
            if self._ended is not None:
                self._closed = True
                if self._refused:  # as websockets reports a close with code 1009
                    raise FrameTooLargeError(f"{self._peer} refused a frame over its limit")
                raise ConnectionLostError(f"link to {self._peer} closed: {self._ended}")
            if self._closed:
                raise ConnectionLostError(f"link to {self._peer} is closed")
            self._arrived.clear()
            await self._arrived.wait()
        due, frame = self._inbox[0]
        if due:
            wait = due - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)  # the link's latency, asked for by its maker
            if not self._inbox or self._inbox[0][1] is not frame:  # cut meanwhile
                return await self.recv()
        self._inbox.popleft()
        self._inbox_bytes -= len(frame)
        self._taken.set()
        if len(frame) > self._max:
            if self._other is not None:
                self._other._refused = True
            await self.close("frame too large")
            raise FrameTooLargeError(f"{self._peer} sent {len(frame)} bytes; limit {self._max}")
        return frame

    async def close(self, reason: str = "") -> None:
        """Close this end: what was sent still arrives, then the peer sees the reason."""
        if self._closed:
            return
        self._closed = True
        self._end_here("closed here")
        other = self._other
        if other is not None and other._ended is None:
            # As a websocket answers a close frame: the peer is closed too, and reads
            # what was sent before, then the reason.
            other._closed = True
            other._ended = reason or "closed by the peer"
            other._arrived.set()
            other._taken.set()

    def cut(self) -> None:
        """Break the link now, as a network failure would: frames in flight are lost,
        and both ends see ConnectionLostError."""
        for end in (self, self._other):
            if end is not None:
                end._inbox.clear()
                end._inbox_bytes = 0
                end._closed = True
                end._end_here("the link was cut")

    def _end_here(self, why: str) -> None:
        if self._ended is None:
            self._ended = why
        self._arrived.set()
        self._taken.set()


def _check_limits(max_frame_bytes: object, max_queued_frames: object) -> None:
    for name, value in (
        ("max_frame_bytes", max_frame_bytes),
        ("max_queued_frames", max_queued_frames),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, not {value!r}")


def memory_pipe(
    a: str = "client",
    b: str = "server",
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    *,
    max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
    delay: float = 0.0,
) -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected channel ends: the first talks to ``b``, the second to ``a``.

    Both start with the same limits; ``delay`` (seconds) holds every frame, both ways.
    """
    left = MemoryChannel(b, max_frame_bytes, max_queued_frames=max_queued_frames, delay=delay)
    right = MemoryChannel(a, max_frame_bytes, max_queued_frames=max_queued_frames, delay=delay)
    left._other, right._other = right, left
    return left, right


class MemoryListener:
    """An in-memory server: :meth:`connect` gives a client channel and runs the handler.

    ``max_frame_bytes`` and ``max_queued_frames`` are the server ends' limits from
    their first frame (the client ends get the defaults, as a websocket client does).
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        handler: ChannelHandler,
        name: str = "memory-server",
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
        on_close: Callable[[MemoryListener], None] | None = None,
    ) -> None:
        _check_limits(max_frame_bytes, max_queued_frames)
        self._handler = handler
        self._name = name
        self._limits = (max_frame_bytes, max_queued_frames)
        self._on_close = on_close
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[MemoryChannel] = set()
        self._closed = False

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` began: no new connections."""
        return self._closed

    async def connect(self, client_name: str | None = None, *, delay: float = 0.0) -> MemoryChannel:
        """A new client channel; the handler runs on its server end."""
        if self._closed:
            raise ConnectionLostError(f"{self.url} is not listening")
        client, server = memory_pipe(
            client_name or f"client-{next(self._ids)}", self._name, delay=delay
        )
        server.set_limits(max_frame_bytes=self._limits[0], max_queued_frames=self._limits[1])
        self._open.update((client, server))
        task: asyncio.Task[None] = asyncio.ensure_future(self._run(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def _run(self, server: MemoryChannel) -> None:
        try:
            await self._handler(server)
        finally:
            self._open.discard(server)
            if server._other is not None:
                self._open.discard(server._other)

    async def close(self) -> None:
        """Stop accepting, cut every open channel and wait for the handlers to end."""
        if not self._closed and self._on_close is not None:
            self._on_close(self)
        self._closed = True
        for channel in list(self._open):
            channel.cut()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
