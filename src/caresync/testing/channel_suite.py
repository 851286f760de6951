"""The channel conformance suite: what a replica and a server rely on of any channel.

Every transport caresync runs on passes it: websockets over TCP and the in-memory
twin here (``tests/transport/test_channel_conformance.py``), and a third-party
transport in its own tests. Subclass :class:`ChannelSuite` in a class whose name
starts with ``Test``, and provide a connected pair and a way to break it::

    from caresync.testing.channel_suite import ChannelSuite

    class TestMyChannel(ChannelSuite):
        def pair(self, max_frame_bytes):
            return my_connected_pair(max_frame_bytes)   # an async context manager

        async def cut(self, client, server):
            ...                                          # break the link, as a network failure

The tests are async (pytest-asyncio runs them: ``pip install "caresync[testing]"``).
What they check, and why the shells need it:

* frames arrive whole, in order, both ways, also when sent from two tasks at once;
* ``close(reason)`` lets what was sent arrive, then the peer's ``recv`` raises
  ConnectionLostError whose text holds the reason (a replica shows why a server
  closed it: a slow reader, a revoked replica); closing is idempotent, and an
  end closed or closed by its peer refuses ``send`` with ConnectionLostError;
* a ``recv`` waiting when either end closes, or when the link is cut, ends with
  ConnectionLostError (a live laptop's reader must not hang);
* a frame over the receiver's limit is refused (FrameTooLargeError, or the link
  drops), and ``set_limits`` changes the limit of a running channel (a server
  starts every connection small and raises it after the login); bad limits are
  an InvalidInputError;
* a reader that falls behind its ``max_queued_frames`` holds the sender back but
  loses nothing;
* ``peer`` names the other end; ``remote_host`` is an address or None;
  ``channel_binding`` is None without TLS (``binds_channel`` says otherwise).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import pytest

from caresync.exceptions import ConnectionLostError, FrameTooLargeError, InvalidInputError
from caresync.transport.base import Channel

__all__ = ["WAIT_S", "ChannelSuite"]

WAIT_S = 10.0
"""Upper bound of any wait in the suite: a conforming channel is far below it."""

Pair = tuple[Channel, Channel]


class ChannelSuite:
    """Base class of a channel's conformance tests. Override :meth:`pair` and :meth:`cut`."""

    pytestmark: ClassVar[list[Any]] = [pytest.mark.asyncio]

    binds_channel = False
    """True if the pair runs over TLS (``channel_binding`` is then bytes, equal at both ends)."""

    def pair(self, max_frame_bytes: int) -> AbstractAsyncContextManager[Pair]:
        """An async context manager giving a connected ``(client, server)`` pair, both
        ends accepting frames up to ``max_frame_bytes``; it closes both on exit."""
        raise NotImplementedError

    async def cut(self, client: Channel, server: Channel) -> None:
        """Break the pair's link as a network failure would (no closing handshake)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ frames

    async def test_frames_arrive_whole_and_in_order(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            frames = [bytes([i]) * (i * 100 + 1) for i in range(20)] + [b""]
            for frame in frames:
                await client.send(frame)
            assert [await _recv(server) for _ in frames] == frames
            await server.send(b"reply")
            assert await _recv(client) == b"reply"

    async def test_frames_from_two_tasks_are_not_mixed(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            a = [b"a%d" % i * 500 for i in range(10)]
            b = [b"b%d" % i * 500 for i in range(10)]

            async def send_all(frames: list[bytes]) -> None:
                for frame in frames:
                    await client.send(frame)

            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(send_all(a), send_all(b))
                got = [await server.recv() for _ in range(20)]
            assert [f for f in got if f.startswith(b"a")] == a
            assert [f for f in got if f.startswith(b"b")] == b

    async def test_a_reader_that_falls_behind_holds_the_sender_and_loses_nothing(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            server.set_limits(max_frame_bytes=1 << 20, max_queued_frames=1)
            # More than any socket buffers: the sender must wait for the reader.
            frames = [bytes([i % 256]) * 32 * 1024 for i in range(128)]

            async def send_all() -> None:
                for frame in frames:
                    await client.send(frame)

            sender = asyncio.create_task(send_all())
            try:
                async with asyncio.timeout(WAIT_S):
                    got = [await server.recv() for _ in frames]
                    await sender
            finally:
                sender.cancel()
            assert got == frames

    # ----------------------------------------------------------------- closing

    async def test_close_delivers_what_was_sent_then_the_reason(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            await server.send(b"last update")
            await server.close("too far behind the live updates")
            assert await _recv(client) == b"last update"
            with pytest.raises(ConnectionLostError) as lost:
                await _recv(client)
            assert "too far behind the live updates" in str(lost.value)
            assert server.closed
            with pytest.raises(ConnectionLostError):
                await server.send(b"after close")

    async def test_closing_one_end_is_connection_lost_on_the_other(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            await client.close()
            with pytest.raises(ConnectionLostError):
                await _recv(server)
            with pytest.raises(ConnectionLostError):
                await client.send(b"after close")
            assert client.closed
            await client.close()  # idempotent
            with pytest.raises(ConnectionLostError):
                await server.send(b"to a closed peer")
            assert server.closed

    async def test_a_waiting_recv_ends_when_the_peer_closes(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            waiting = asyncio.create_task(client.recv())
            await asyncio.sleep(0)  # let it start waiting (one step of the loop, no timing)
            await server.close("revoked")
            with pytest.raises(ConnectionLostError):
                async with asyncio.timeout(WAIT_S):
                    await waiting

    async def test_a_waiting_recv_ends_when_its_own_end_closes(self) -> None:
        async with self.pair(1 << 20) as (client, _server):
            waiting = asyncio.create_task(client.recv())
            await asyncio.sleep(0)
            await client.close()
            with pytest.raises(ConnectionLostError):
                async with asyncio.timeout(WAIT_S):
                    await waiting

    async def test_a_cut_link_is_connection_lost_at_both_ends(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            await client.send(b"before")
            assert await _recv(server) == b"before"
            waiting = asyncio.create_task(server.recv())
            await asyncio.sleep(0)
            await self.cut(client, server)
            with pytest.raises(ConnectionLostError):
                async with asyncio.timeout(WAIT_S):
                    await waiting
            with pytest.raises(ConnectionLostError):
                await _recv(client)
            with pytest.raises(ConnectionLostError):
                await client.send(b"after the cut")
            assert client.closed
            assert server.closed

    # ------------------------------------------------------------------ limits

    async def test_an_oversized_frame_is_refused(self) -> None:
        async with self.pair(1024) as (client, server):
            await client.send(b"x" * 1024)
            assert await _recv(server) == b"x" * 1024  # the limit itself is allowed
            await client.send(b"x" * 4096)
            with pytest.raises((FrameTooLargeError, ConnectionLostError)):
                await _recv(server)
            # The receiver closed the link; websockets tells the sender why (close code 1009).
            with pytest.raises((FrameTooLargeError, ConnectionLostError)):
                await _recv(client)

    async def test_limits_change_on_a_running_channel(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            server.set_limits(max_frame_bytes=2048, max_queued_frames=4)
            await client.send(b"y" * 2048)
            assert await _recv(server) == b"y" * 2048
            server.set_limits(max_frame_bytes=1 << 20, max_queued_frames=16)
            await client.send(b"z" * 100_000)
            assert await _recv(server) == b"z" * 100_000
            for bad in (0, -1, True, 1.5, "16"):
                with pytest.raises(InvalidInputError):
                    server.set_limits(max_frame_bytes=bad, max_queued_frames=4)  # type: ignore[arg-type]
                with pytest.raises(InvalidInputError):
                    server.set_limits(max_frame_bytes=1024, max_queued_frames=bad)  # type: ignore[arg-type]

    # -------------------------------------------------------------- properties

    async def test_properties(self) -> None:
        async with self.pair(1 << 20) as (client, server):
            for end in (client, server):
                assert isinstance(end, Channel)
                assert isinstance(end.peer, str)
                assert end.peer
                assert end.remote_host is None or isinstance(end.remote_host, str)
                assert not end.closed
            if self.binds_channel:
                assert isinstance(client.channel_binding, bytes)
                assert client.channel_binding == server.channel_binding
            else:
                assert client.channel_binding is None
                assert server.channel_binding is None


async def _recv(channel: Channel) -> bytes:
    async with asyncio.timeout(WAIT_S):
        return await channel.recv()
