"""In-memory channels: the websocket channel's twin for tests and simulations.

Frames are delivered in order through asyncio queues. A link can be cut
(both ends then see ConnectionLostError), which is how tests take a laptop
offline in the middle of a sync without sockets or sleeps.
"""

from __future__ import annotations

import asyncio
import itertools

from caresync.exceptions import ConnectionLostError, FrameTooLargeError, InvalidInputError
from caresync.transport.base import DEFAULT_MAX_FRAME_BYTES, ChannelHandler

__all__ = ["MemoryChannel", "MemoryListener", "memory_pipe"]

_CLOSED = object()


class MemoryChannel:
    """One end of an in-memory link."""

    def __init__(self, peer: str, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._peer = peer
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._other: MemoryChannel | None = None
        self._closed = False
        self._max = max_frame_bytes
        self.frames_sent = 0
        self.bytes_sent = 0

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
        """Change the largest frame accepted (an in-memory link queues without bound)."""
        _check_limits(max_frame_bytes, max_queued_frames)
        self._max = max_frame_bytes

    async def send(self, frame: bytes) -> None:
        if self._closed or self._other is None:
            raise ConnectionLostError(f"link to {self._peer} is closed")
        if not isinstance(frame, (bytes, bytearray)):
            raise InvalidInputError("frames are bytes")
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        self._other._inbox.put_nowait(bytes(frame))

    async def recv(self) -> bytes:
        if self._closed and self._inbox.empty():
            raise ConnectionLostError(f"link to {self._peer} is closed")
        item = await self._inbox.get()
        if item is _CLOSED:
            self._closed = True
            raise ConnectionLostError(f"link to {self._peer} is closed")
        frame = item if isinstance(item, bytes) else b""
        if len(frame) > self._max:
            await self.close("frame too large")
            raise FrameTooLargeError(f"{self._peer} sent {len(frame)} bytes; limit {self._max}")
        return frame

    async def close(self, reason: str = "") -> None:
        self.cut()

    def cut(self) -> None:
        """Break the link now, as a network failure would (both ends notice)."""
        for end in (self, self._other):
            if end is not None and not end._closed:
                end._closed = True
                end._inbox.put_nowait(_CLOSED)


def _check_limits(max_frame_bytes: object, max_queued_frames: object) -> None:
    for name, value in (
        ("max_frame_bytes", max_frame_bytes),
        ("max_queued_frames", max_queued_frames),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, not {value!r}")


def memory_pipe(
    a: str = "client", b: str = "server", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected channel ends: the first talks to ``b``, the second to ``a``."""
    left, right = MemoryChannel(b, max_frame_bytes), MemoryChannel(a, max_frame_bytes)
    left._other, right._other = right, left
    return left, right


class MemoryListener:
    """An in-memory server: :meth:`connect` gives a client channel and runs the handler."""

    _ids = itertools.count(1)

    def __init__(self, handler: ChannelHandler, name: str = "memory-server") -> None:
        self._handler = handler
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[MemoryChannel] = set()
        self._closed = False

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    async def connect(self, client_name: str | None = None) -> MemoryChannel:
        if self._closed:
            raise ConnectionLostError(f"{self.url} is not listening")
        client, server = memory_pipe(client_name or f"client-{next(self._ids)}", self._name)
        self._open.update((client, server))
        task: asyncio.Task[None] = asyncio.ensure_future(self._handler(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def close(self) -> None:
        self._closed = True
        for channel in self._open:
            channel.cut()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
