"""Counting the bytes on the wire: a wrapper around each channel the simulation's server serves.

The counts are frame payloads (what the sync protocol sends), measured at the
server's end of every websocket: ``up`` is what laptops sent, ``down`` what
the server sent them. Websocket and TCP headers are not included.
"""

from __future__ import annotations

from dataclasses import dataclass

from caresync.transport import Channel, ChannelHandler

__all__ = ["CountingChannel", "WireCounter"]


@dataclass
class WireCounter:
    """Totals over every connection wrapped by :meth:`wrap`."""

    bytes_up: int = 0
    bytes_down: int = 0
    frames_up: int = 0
    frames_down: int = 0
    connections: int = 0

    def wrap(self, handler: ChannelHandler) -> ChannelHandler:
        """A handler that runs ``handler`` on a counting wrapper of each channel."""

        async def counted(channel: Channel) -> None:
            self.connections += 1
            await handler(CountingChannel(channel, self))

        return counted


class CountingChannel:
    """A :class:`~caresync.transport.Channel` that adds what passes through to a counter."""

    def __init__(self, inner: Channel, counter: WireCounter) -> None:
        self._inner = inner
        self._counter = counter

    @property
    def peer(self) -> str:
        return self._inner.peer

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def remote_host(self) -> str | None:
        return self._inner.remote_host

    @property
    def channel_binding(self) -> bytes | None:
        return self._inner.channel_binding

    def set_limits(self, *, max_frame_bytes: int, max_queued_frames: int) -> None:
        self._inner.set_limits(max_frame_bytes=max_frame_bytes, max_queued_frames=max_queued_frames)

    async def send(self, frame: bytes) -> None:
        await self._inner.send(frame)
        self._counter.bytes_down += len(frame)
        self._counter.frames_down += 1

    async def recv(self) -> bytes:
        frame = await self._inner.recv()
        self._counter.bytes_up += len(frame)
        self._counter.frames_up += 1
        return frame

    async def close(self, reason: str = "") -> None:
        await self._inner.close(reason)
